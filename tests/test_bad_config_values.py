"""Config values that used to reach timm, torch or Lightning and end in a traceback, each class one paragraph that
names the key, the value and what is allowed: a scalar where a list belongs, an out-of-range or unknown callback
option, a misspelt optimiser or schedule name, a malformed augmentation string, a download without a network,
and a debug preset over the trainer chosen on the command line. In-process: the validation functions and
Hydra's compose API."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from conftest import compose_cfg
from helpers.config_values import composed as _composed
from helpers.config_values import with_value as _with
from vitlab.cli.validate import check_config
from vitlab.errors import ConfigError

# --- issue 23, scope 6: the config-level tracebacks, each class one paragraph ---------------------------------
# A scalar where a list belongs, an out-of-range callback option, a misspelt optimiser or schedule name, a
# malformed augmentation string, a download without a network, a debug preset over the user's accelerator.

CIFAR = ("data=cifar10", "optim=sgd")  # timm's augmentation keys, mean and std


def _list_keys(node: object, prefix: str) -> list[str]:
    """Dotted keys of the list values under `node` (a loaded YAML file), not Hydra's defaults lists."""
    if isinstance(node, dict):
        return [k for key, v in node.items() if key != "defaults" for k in _list_keys(v, f"{prefix}{key}.")]
    return [prefix.rstrip(".")] if isinstance(node, list) else []


def _shipped_list_keys() -> set[str]:
    import yaml

    from conftest import CONFIGS

    keys: set[str] = set()
    for path in CONFIGS.rglob("*.yaml"):
        group = path.parent.relative_to(CONFIGS).as_posix()
        if group.split("/")[0] in ("paper", "hydra", "hparams_search", "local") or path.name in ("bench.yaml",):
            continue  # other commands' configs (vitlab-reproduce, vitlab-bench) and Hydra's own
        text = path.read_text()
        package = "" if "@package _global_" in text or group == "." else group.replace("/", ".") + "."
        keys |= {k for k in _list_keys(yaml.safe_load(text) or {}, package) if not k.startswith("hydra.")}
    return keys


def test_every_list_valued_key_of_the_shipped_configs_has_a_rule() -> None:
    from vitlab.cli.validate_lists import LIST_RULES, OTHER_FORMS

    keys = _shipped_list_keys()
    assert {"tags", "data.mean", "data.std", "data.augment.scale", "model.stem.widths"} <= keys, keys  # the scan works
    missing = sorted(keys - set(LIST_RULES) - set(OTHER_FORMS))
    assert not missing, f"list-valued keys without a rule in vitlab.cli.validate_lists.LIST_RULES: {missing}"
    check_config(_composed(*CIFAR))  # every rule accepts what ships
    check_config(_composed("experiment=ode/digits_transfer"))  # data.classes


@pytest.mark.parametrize(
    ("key", "value"),
    [
        ("tags", "dev"),
        ("data.mean", 0.5),
        ("data.std", [0.2, 0.2]),
        ("data.std", [0.2, 0.0, 0.2]),
        ("data.augment.scale", 0.5),
        ("data.augment.scale", [1.0, 0.5]),
        ("data.augment.zoom", 1.1),
        ("data.classes", 3),
        ("data.classes", [1, 1]),
        ("model.stem.widths", 32),
        ("model.stem.strides", 4),
        ("model.replace_pretrained", "patch_embed"),
        ("module.mixup.cutmix_minmax", 0.5),
        ("scheduler.decay_milestones", 30),
    ],
)
def test_a_scalar_or_wrong_list_where_a_list_belongs_names_the_key_and_the_form(key: str, value: object) -> None:
    from vitlab.cli.validate_lists import LIST_RULES

    with pytest.raises(ConfigError) as refused:
        check_config(_with(key, value, CIFAR))
    assert str(refused.value) == f"{key}={value!r} is not allowed: it must be {LIST_RULES[key].allowed()}."


def test_a_scalar_list_override_from_the_command_line_is_one_paragraph() -> None:
    with pytest.raises(ConfigError) as refused:
        check_config(compose_cfg(["data=cifar10", "data.mean=0.5"]))  # was: 'float' object is not iterable
    assert str(refused.value) == (
        "data.mean=0.5 is not allowed: it must be a list of 3 numbers, e.g. [0.485,0.456,0.406]."
    )


def test_every_option_of_the_shipped_callbacks_has_a_rule() -> None:
    import yaml

    from conftest import CONFIGS
    from vitlab.cli.validate_callbacks import CALLBACK_CHOICES, CALLBACK_RULES, MONITORS, NOT_CHECKED

    checked = set(CALLBACK_RULES) | set(CALLBACK_CHOICES) | set(MONITORS)
    options = {
        f"callbacks.{name}.{key}"
        for path in (CONFIGS / "callbacks").glob("*.yaml")
        for name, node in (yaml.safe_load(path.read_text()) or {}).items()
        if isinstance(node, dict) and name != "defaults"
        for key in node
        if key not in NOT_CHECKED
    }
    assert "callbacks.ema.decay" in options and "callbacks.lr_monitor.logging_interval" in options, options
    assert not sorted(options - checked), f"callback options without a rule: {sorted(options - checked)}"


@pytest.mark.parametrize(
    ("key", "value", "message"),
    [
        ("callbacks.early_stopping.patience", -1, "it must be an integer >= 0."),
        ("callbacks.early_stopping.min_delta", -0.1, "it must be a number >= 0."),
        ("callbacks.model_checkpoint.save_top_k", -5, "it must be an integer >= -1."),
        ("callbacks.ema.decay", 2, "it must be a number in [0, 1]."),
        ("callbacks.ema.update_every_n_steps", 0, "it must be an integer >= 1."),
        ("callbacks.last_checkpoint.every_n_train_steps", -1, "it must be an integer >= 0 (or null)."),
        ("callbacks.feature_redraw.seed", "abc", "it must be an integer in [0, 4.29497e+09]."),
        ("callbacks.lr_monitor.log_momentum", "yes", "it must be true or false."),
        ("callbacks.lr_monitor.logging_interval", "bogus", "is not an option. Allowed: step, epoch, null."),
        ("callbacks.lr_monitor.logging_interval", "steps", "Allowed: step, epoch, null. Did you mean "),
        (
            "callbacks.early_stopping.mode",
            "maximum",
            "Allowed: min, max. Did you mean callbacks.early_stopping.mode=max?",
        ),
        ("callbacks.model_checkpoint.save_last", 1, "is not an option. Allowed: true, false, link, null."),
        ("callbacks.model_checkpoint.monitor", "val_acc", "Did you mean callbacks.model_checkpoint.monitor=val/acc?"),
        ("callbacks.early_stopping.monitor", None, "Allowed: a metric vitlab logs: val/acc, "),
    ],
)
def test_an_out_of_range_callback_option_names_the_key_and_what_is_allowed(key: str, value, message: str) -> None:
    with pytest.raises(ConfigError) as refused:
        check_config(_with(key, value))
    text = str(refused.value)
    assert text.startswith(f"{key}={value!r} is not ") and message in text and "\n" not in text, text


@pytest.mark.parametrize(
    ("override", "message"),
    [
        (
            "+callbacks.dynamics_monitor.every=2",
            "(vitlab.training.dynamics_monitor.DynamicsMonitor). Its options: none.",
        ),
        ("+callbacks.model_checkpoint.save_topk=2", "Did you mean callbacks.model_checkpoint.save_top_k?"),
        ("+callbacks.lr_monitor.interval=step", "Its options: logging_interval, log_momentum, log_weight_decay."),
    ],
)
def test_a_key_a_callback_does_not_take_names_its_options(override: str, message: str) -> None:
    key = override.lstrip("+").split("=")[0]
    with pytest.raises(ConfigError) as refused:  # was: "DynamicsMonitor() takes no arguments", a traceback
        check_config(_with(key, 2))
    text = str(refused.value)
    assert text.startswith(f"{key} is not an option of {key.rsplit('.', 1)[0]} (") and message in text, text


@pytest.mark.parametrize(
    ("key", "value"),
    [
        ("callbacks.ema.decay", 0.9999),
        ("callbacks.lr_monitor.logging_interval", "step"),
        ("callbacks.model_checkpoint.save_last", "link"),
        ("callbacks.model_checkpoint.monitor", "val/loss"),
        ("callbacks.early_stopping.monitor", "dynamics/a_mean"),
    ],
)
def test_valid_callback_options_pass(key: str, value: object) -> None:
    check_config(_with(key, value))


@pytest.mark.parametrize(
    ("key", "value", "message"),
    [
        ("optim.opt", "adamww", "Did you mean optim.opt=adamw?"),
        ("optim.opt", "sgdd", "Did you mean optim.opt=sgd?"),
        ("optim.opt", 3, "Allowed: a timm optimiser name, e.g. adamw"),
        ("scheduler.sched", "cosinee", "Allowed: cosine, tanh, step, multistep, poly, wsd, rsqrt, constant. Did you "),
        ("scheduler.sched", "plateau", "steps the schedule every optimiser update"),
        ("scheduler.sched", "none", "use scheduler=none"),
        ("scheduler.decay_fn", "sqrt", "Allowed: null, linear, 1-sqrt, cosine, power, exp. Did you mean"),
        ("module.mixup.mode", "elements", "Allowed: batch, pair, elem. Did you mean module.mixup.mode=elem?"),
        ("trainer.gradient_clip_algorithm", "norms", "Did you mean trainer.gradient_clip_algorithm=norm?"),
    ],
)
def test_a_misspelt_name_suggests_the_closest_valid_one(key: str, value: object, message: str) -> None:
    with pytest.raises(ConfigError) as refused:
        check_config(_with(key, value))
    text = str(refused.value)
    assert text.startswith(f"{key}={value!r} is not ") and message in text and "\n" not in text, text


@pytest.mark.parametrize("name", ["adamw", "LAMB", "lookahead_adamw", "sgd"])
def test_timm_optimiser_names_in_any_case_or_with_lookahead_pass(name: str) -> None:
    check_config(_with("optim.opt", name))


def test_every_allowed_schedule_is_built_by_timm_and_timm_errors_are_one_paragraph() -> None:
    from vitlab.cli.validate_names import SCHEDULES
    from vitlab.training.optim import build_scheduler

    optimizer = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=0.1)
    for name in SCHEDULES:  # the list is not stricter than timm
        build_scheduler(optimizer, {"sched": name, "warmup_epochs": 1}, max_epochs=4, total_steps=40)
    with pytest.raises(ConfigError, match=r"not a valid timm schedule for trainer.max_epochs=4: wsd schedule requires"):
        build_scheduler(optimizer, {"sched": "wsd", "decay_epochs": 9}, max_epochs=4, total_steps=40)


def test_a_misspelt_schedule_group_is_hydras_message_with_the_options() -> None:
    from hydra.errors import MissingConfigException

    with pytest.raises(MissingConfigException, match=r"(?s)Could not find 'scheduler/cosinee'.*cosine.*none"):
        compose_cfg(["scheduler=cosinee"])


BAD_AUGMENT = [
    ("rand-m9-xx", "section 'xx' is not one of m<int>"),  # timm skips it silently
    ("rand-mx9", "section 'mx9' is not one of"),
    ("rand-m9.5", "section 'm9.5' does not have the form m<int>"),
    ("rand-inc2", "section 'inc2' does not have the form inc<0|1>"),
    ("rand-tfoo", "section 'tfoo' does not have the form t<weights|3aw|3a>"),
    ("augmix-m3-z2", "section 'z2' is not one of m<int> magnitude; w<int>"),
    ("autoaug-m9", "it starts with 'autoaug', which is neither rand, augmix nor an AutoAugment policy"),
    ("original-mstd", "section 'mstd' does not have the form mstd<std>"),
]


@pytest.mark.parametrize(("text", "problem"), BAD_AUGMENT, ids=[t for t, _ in BAD_AUGMENT])
def test_a_malformed_augmentation_string_names_the_key_the_section_and_the_form(text: str, problem: str) -> None:
    with pytest.raises(ConfigError) as refused:
        check_config(_with("data.augment.randaugment", text, CIFAR))
    message = str(refused.value)
    assert message.startswith(f"data.augment.randaugment={text!r} is not a timm augmentation string: {problem}")
    assert "The form is rand-<sections> (RandAugment, e.g. rand-m9-mstd0.5-inc1)" in message, message


@pytest.mark.parametrize(
    "text",
    ["rand-m9-mstd0.5-inc1", "rand-m9-n3-mstd0.5", "rand-mstd1-tweights", "augmix-m5-w4-d2", "original-mstd0.5", "v0r"],
)
def test_well_formed_augmentation_strings_pass_and_timm_builds_them(text: str) -> None:
    from vitlab.data.transforms import build_transform

    check_config(_with("data.augment.randaugment", text, CIFAR))
    build_transform(32, True, (0.5,) * 3, (0.5,) * 3, {"randaugment": text})


@pytest.mark.parametrize("value", ["abc", [0.4, 0.4], -1])
def test_a_bad_color_jitter_is_one_paragraph(value: object) -> None:
    with pytest.raises(ConfigError, match=r"data.augment.color_jitter=.* is not allowed: it must be a strength >= 0"):
        check_config(_with("data.augment.color_jitter", value, CIFAR))


def test_the_transform_builder_refuses_a_malformed_string_itself() -> None:
    from vitlab.data.transforms import build_transform

    with pytest.raises(ConfigError, match=r"data.augment.randaugment='rand-m9-xx' is not a timm augmentation string"):
        build_transform(32, True, (0.5,) * 3, (0.5,) * 3, {"randaugment": "rand-m9-xx"})


def _no_network(monkeypatch) -> list[tuple]:
    """Every connection attempt fails as on a compute node without internet; nothing can download."""
    import socket

    tried: list[tuple] = []

    def unreachable(*args, **kwargs):
        tried.append(args)
        raise OSError(101, "Network is unreachable")

    monkeypatch.setattr(socket, "create_connection", unreachable)
    monkeypatch.setattr(socket, "getaddrinfo", unreachable)
    return tried


@pytest.mark.parametrize("name", ["cifar10", "svhn"])
def test_a_download_without_a_network_names_the_url_and_the_way_out(name: str, tmp_path: Path, monkeypatch) -> None:
    from vitlab.data.torchvision_sets import SPECS, TorchvisionDataModule, download_urls

    tried = _no_network(monkeypatch)
    dm = TorchvisionDataModule(name, str(tmp_path), download=True, num_workers=0)
    with pytest.raises(ConfigError) as refused:
        dm.prepare_data()
    message = str(refused.value)
    assert tried, "the download was never attempted"
    assert message.startswith(f"data={name} data.download=true could not reach {download_urls(SPECS[name].cls)[0]}")
    assert "no network connection from this machine ([Errno 101] Network is unreachable)" in message, message
    assert f"point paths.data_dir (or data.root, now {tmp_path}) at it" in message and "\n" not in message, message
    assert not [p for p in tmp_path.rglob("*") if p.is_file() and p.stat().st_size], "something was downloaded"


def test_a_download_the_server_refuses_says_what_it_answered(tmp_path: Path, monkeypatch) -> None:
    import urllib.error
    import urllib.request

    from vitlab.data.torchvision_sets import TorchvisionDataModule

    def not_found(request, *args, **kwargs):
        url = getattr(request, "full_url", request)
        raise urllib.error.HTTPError(url, 404, "Not Found", {}, None)

    _no_network(monkeypatch)
    monkeypatch.setattr(urllib.request, "urlopen", not_found)
    with pytest.raises(ConfigError, match=r"could not reach https://\S+: the server answered HTTP 404 Not Found"):
        TorchvisionDataModule("cifar10", str(tmp_path), download=True, num_workers=0).prepare_data()


@pytest.mark.parametrize(
    ("overrides", "accelerator", "devices"),
    [
        (["debug=fdr"], "cpu", 1),
        (["trainer=gpu", "debug=fdr"], "gpu", 1),  # was: cpu, silently
        (["debug=limit", "trainer=ddp_cpu"], "cpu", 2),
        (["debug=overfit", "trainer.accelerator=gpu"], "gpu", 1),
        (["experiment=eit/imagenet", "debug=fdr"], "cpu", 1),
    ],
)
def test_a_debug_preset_keeps_the_trainer_chosen_on_the_command_line(overrides, accelerator: str, devices) -> None:
    cfg = compose_cfg(overrides)
    assert (cfg.trainer.accelerator, cfg.trainer.devices) == (accelerator, devices), overrides
    assert cfg.trainer.get("fast_dev_run") or cfg.trainer.max_epochs in (3, 20)  # the preset itself still applies
    assert cfg.task_name == "debug" and cfg.data.num_workers == 0


# --- vitlab's optimiser keys: layer-wise lr decay and the fused step (vitlab.cli.rules.check_optim) -------------


@pytest.mark.parametrize(
    ("key", "value", "allowed"),
    [
        *[("optim.layer_decay", v, "a number in (0, 1] (or null)") for v in (0, -0.5, 1.5, "abc", True)],
        *[("optim.layer_decay_min_scale", v, "a number in [0, 1]") for v in (-0.1, 1.5, None, "low")],
    ],
)
def test_a_layer_decay_outside_its_range_names_the_key_and_the_range(key: str, value: object, allowed: str) -> None:
    with pytest.raises(ConfigError) as refused:
        check_config(_with(key, value))
    assert str(refused.value) == f"{key}={value!r} is not allowed: it must be {allowed}."


@pytest.mark.parametrize("value", ["yes", "fused", 1, None])
def test_an_optim_fused_other_than_auto_true_false_is_refused(value: object) -> None:
    with pytest.raises(ConfigError) as refused:
        check_config(_with("optim.fused", value))
    assert str(refused.value).startswith(f"optim.fused={value!r} is not an option. Allowed: auto, true, false.")


@pytest.mark.parametrize(
    ("key", "value"),
    [("optim.layer_decay", 0.65), ("optim.layer_decay", 1), ("optim.layer_decay", None)]
    + [("optim.layer_decay_min_scale", 0), ("optim.layer_decay_min_scale", 1.0)]
    + [("optim.fused", v) for v in ("auto", True, False)],
)
def test_valid_layer_decay_and_fused_values_pass(key: str, value: object) -> None:
    check_config(_with(key, value))
