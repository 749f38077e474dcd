"""Every bad input a user meets exits non-zero with one paragraph — the key, the value, what is allowed or what
to do — without a Python traceback, and loses nothing. In-process for each case (the validation functions and
Hydra's compose API); one `vitlab-train`/`vitlab-eval` process per class of input at the end."""

from __future__ import annotations

import copy
import functools
import json
import os
import re
from pathlib import Path

import pytest
import torch
from hydra.utils import instantiate
from omegaconf import OmegaConf, open_dict

from conftest import TINY, compose_cfg, run_cli
from helpers import fake_layouts
from vitlab.cli.checkpoint import read_checkpoint
from vitlab.cli.hydra_callbacks import CheckRunDirectory
from vitlab.cli.unknown_keys import unknown_key_error
from vitlab.cli.validate import RULES, check_config
from vitlab.data.corrupt import skipped_files
from vitlab.data.imagefolder import ImageFolderDataModule
from vitlab.errors import ConfigError
from vitlab.models.backbone import create_backbone
from vitlab.models.weights import read_state_dict

# --- types and ranges of every numeric and boolean key ------------------------------------------------------


@functools.cache
def _composed(*overrides: str):
    return compose_cfg(list(overrides))


def _with(key: str, value: object, base: tuple[str, ...] = ("optim=sgd", "data.train_per_class=5")):
    """A copy of a config composed once per base (composing costs ~1 s on 2 cores), with `key` set to `value`."""
    cfg = copy.deepcopy(_composed(*base))  # default: sgd has momentum; digits has every data key
    with open_dict(cfg):
        OmegaConf.update(cfg, key, value, force_add=True)
    return cfg


def test_every_rule_accepts_the_shipped_defaults() -> None:
    check_config(compose_cfg(["optim=sgd", "data.train_per_class=5"]))


@pytest.mark.parametrize("key", sorted(RULES))
def test_a_value_of_the_wrong_type_names_the_key(key: str) -> None:
    wrong = 1.5 if RULES[key].kind is bool else "abc"
    with pytest.raises(ConfigError) as refused:
        check_config(_with(key, wrong))
    assert str(refused.value) == f"{key}={wrong!r} is not allowed: it must be {RULES[key].allowed()}."


@pytest.mark.parametrize("key", sorted(k for k, r in RULES.items() if r.low is not None))
def test_a_value_out_of_range_names_the_key_and_the_range(key: str) -> None:
    rule = RULES[key]
    below = rule.low - (1 if rule.kind is int else 0.5)
    with pytest.raises(ConfigError) as refused:
        check_config(_with(key, below))
    assert str(refused.value).startswith(f"{key}={below!r} is not allowed: it must be")


@pytest.mark.parametrize(
    ("key", "value"), [("trainer.precision", "fp8"), ("trainer.devices", 0), ("trainer.devices", "x")]
)
def test_trainer_choices_are_checked(key: str, value: object) -> None:
    with pytest.raises(ConfigError, match=key.replace(".", r"\.")):
        check_config(_with(key, value))


# --- keys a target does not take (what Hydra suggests after a typo: +data.<key>=...) -------------------------


@pytest.mark.parametrize(
    ("override", "node", "message"),
    [
        ("+data.batchsize=32", "data", "data.batchsize is not an option of data .* Did you mean data.batch_size"),
        ("+model.stem.width=3", "model", "model.stem.width is not an option .* Did you mean model.stem.widths"),
    ],
)
def test_an_unknown_key_names_the_options(override: str, node: str, message: str) -> None:
    cfg = compose_cfg([override])
    with pytest.raises(Exception) as raised:
        instantiate(cfg[node], **({"num_classes": 3} if node == "model" else {}))
    assert re.search(message, str(unknown_key_error(raised.value, cfg)))


# --- files and folders ---------------------------------------------------------------------------------------


def test_a_corrupt_image_names_the_file_or_is_skipped_and_counted(tmp_path: Path) -> None:
    fake_layouts.image_folder(tmp_path, ("cat", "dog"), 3, ("train", "val", "test"), size=8)
    bad = tmp_path / "test" / "dog" / "1.png"
    bad.write_bytes(b"\x89PNG not really")
    dm = ImageFolderDataModule(root=str(tmp_path), img_size=8, num_workers=0)
    dm.setup()  # fast: nothing is decoded at setup
    with pytest.raises(ConfigError, match=rf"data: {bad} is not a readable image .* data.skip_corrupt=true"):
        [dm.test_set[i] for i in range(len(dm.test_set))]
    dm = ImageFolderDataModule(root=str(tmp_path), img_size=8, num_workers=0, skip_corrupt=True)
    dm.setup()
    assert len([dm.test_set[i] for i in range(len(dm.test_set))]) == 6
    assert skipped_files(dm.train_set, dm.val_set, dm.test_set) == 1  # this data module's count, from zero


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (
            lambda root: (root / "test" / "dog").rename(root / "test" / "dogs"),
            r"test lacks \['dog'\] and has \['dogs'\]",
        ),
        (lambda root: [p.unlink() for p in (root / "test" / "dog").iterdir()], r"test lacks \['dog'\]"),
        (lambda root: [p.unlink() for p in (root / "train" / "dog").iterdir()], r"train: .*no valid file.*dog"),
    ],
    ids=["renamed-class", "class-missing-in-test", "empty-class-folder"],
)
def test_class_folders_that_do_not_match_are_named(tmp_path: Path, change, message: str) -> None:
    fake_layouts.image_folder(tmp_path, ("cat", "dog"), 3, size=8)
    change(tmp_path)
    for empty in [p for p in tmp_path.rglob("*") if p.is_dir() and not any(p.iterdir())]:
        if empty.parent.name == "test":
            empty.rmdir()
    with pytest.raises(ConfigError, match=message):
        ImageFolderDataModule(root=str(tmp_path), img_size=8, num_workers=0).setup()


class Model(torch.nn.Module):  # a class pickled into the file: only unpickling code could read it
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x


def test_files_with_pickled_code_are_refused_without_suggesting_to_unpickle_them(tmp_path: Path) -> None:
    path = tmp_path / "model.pt"
    torch.save(Model(), path)
    for read in (read_checkpoint, read_state_dict):
        with pytest.raises(ConfigError) as refused:
            read(path)
        assert "pickled Python objects" in str(refused.value) and "weights_only=False" not in str(refused.value)


def test_hub_weights_offline_fail_at_once_with_the_way_out(monkeypatch) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(ConfigError, match=r"hub:vit_tiny_patch16_224.augreg_in21k could not be loaded .* file:<path>"):
        create_backbone("vit_tiny_patch16_224", 10, weights="hub:vit_tiny_patch16_224.augreg_in21k")


# --- run directories, export paths, devices, vitlab-eval -------------------------------------------------------


def test_run_directories_must_be_writable_and_never_a_finished_run(tmp_path: Path, capsys) -> None:
    """Each refusal exits 2 with one paragraph on stderr that names the key and its value and the ways out."""
    callback = CheckRunDirectory()

    def refusal(run_dir: Path) -> str:
        with pytest.raises(SystemExit) as stop:
            callback.on_run_start(OmegaConf.create({"hydra": {"run": {"dir": str(run_dir)}}}))
        err = capsys.readouterr().err.strip()
        assert stop.value.code == 2, stop.value.code
        assert err.startswith("vitlab: error: ") and "\n\n" not in err and "Traceback" not in err, err
        assert f"hydra.run.dir={run_dir} " in " ".join(err.split()), err
        return err

    (tmp_path / "a_file").write_text("x")
    err = refusal(tmp_path / "a_file" / "run")
    assert "cannot be created or written" in err and "paths.log_dir" in err, err
    (tmp_path / "done").mkdir()
    (tmp_path / "done" / "results.json").write_text(json.dumps({"status": "ok"}))
    err = " ".join(refusal(tmp_path / "done").split())
    assert "holds a finished run (results.json says ok)" in err, err
    assert "another hydra.run.dir" in err and "ckpt_path=<its checkpoints/last.ckpt>" in err, err  # the ways out
    assert json.loads((tmp_path / "done" / "results.json").read_text()) == {"status": "ok"}  # left as it was
    callback.on_run_start(OmegaConf.create({"hydra": {"run": {"dir": str(tmp_path / "new" / "run")}}}))
    assert capsys.readouterr().err == ""


def test_an_unwritable_export_path_is_refused_before_training(tmp_path: Path) -> None:
    from vitlab.cli.train import _export_path

    (tmp_path / "a_file").write_text("x")
    with pytest.raises(ConfigError, match="cannot be created or written"):
        _export_path(OmegaConf.create({"export_weights": str(tmp_path / "a_file" / "w.safetensors")}))


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has a GPU")
def test_a_gpu_trainer_without_a_gpu_says_so() -> None:
    from vitlab.training.components import check_accelerator

    with pytest.raises(
        ConfigError, match=r"trainer.accelerator=gpu but this machine has no usable CUDA GPU.*trainer=cpu"
    ):
        check_accelerator(compose_cfg(["trainer=gpu"]))


def test_vitlab_eval_without_a_checkpoint_says_what_to_give() -> None:
    from vitlab.cli.eval import run_config

    with pytest.raises(ConfigError, match="vitlab-eval needs ckpt_path="):
        run_config(compose_cfg([], config_name="eval"))


# --- one process per class: exit code, one paragraph, the key, nothing overwritten ---------------------------


def assert_paragraph(run, *fragments: str) -> None:
    assert run.returncode == 2, (run.returncode, run.stderr[-2000:])
    assert "Traceback" not in run.stderr, run.stderr[-3000:]
    for fragment in fragments:
        assert fragment in run.stderr, run.stderr[-3000:]


@pytest.mark.slow  # one vitlab-train process per class of error
@pytest.mark.parametrize(
    ("args", "fragments"),
    [
        (["data.img_size=abc"], ["data.img_size='abc' is not allowed: it must be an integer >= 1"]),
        (["trainer.max_epochs=-3"], ["trainer.max_epochs=-3 is not allowed"]),
        (["+data.batchsize=32"], ["data.batchsize is not an option", "data.batch_size"]),
        (["trainer=gpu"], ["trainer.accelerator=gpu but this machine has no usable CUDA GPU"]),
        (["tags=dev"], ["tags='dev' is not allowed: it must be a list of strings"]),
        (["optim.opt=adamww"], ["optim.opt='adamww' is not an option.", "Did you mean optim.opt=adamw?"]),
    ],
    ids=["type", "range", "unknown-key", "device", "scalar-for-list", "misspelt-name"],
)
def test_the_cli_prints_one_paragraph_and_records_the_failure(tmp_path: Path, args: list[str], fragments) -> None:
    if "trainer=gpu" in args and torch.cuda.is_available():
        pytest.skip("this machine has a GPU")
    tiny = [o for o in TINY if not o.startswith("trainer.accelerator")] if "trainer=gpu" in args else TINY
    run = run_cli("train", [*tiny, *args], tmp_path)
    assert_paragraph(run, *fragments)
    (result,) = run.results()
    assert result["status"] == "failed" and fragments[0] in result["error"]


@pytest.mark.slow
def test_a_non_finite_loss_stops_the_run_as_failed(tmp_path: Path) -> None:
    run = run_cli("train", [*TINY, "optim.lr=1e30", "trainer.max_epochs=2"], tmp_path)
    assert_paragraph(run, "train/loss became", "optim.lr")
    (result,) = run.results()
    assert result["status"] == "failed" and "train/loss became" in result["error"]


def test_a_finished_run_directory_is_refused_before_hydra_writes_into_it(tmp_path: Path) -> None:
    run_dir = tmp_path / "done"
    (run_dir / ".hydra").mkdir(parents=True)
    (run_dir / ".hydra" / "config.yaml").write_text("original: true\n")
    (run_dir / "results.json").write_text(json.dumps({"status": "ok", "test/acc": 0.9}))
    stamp = os.stat(run_dir / ".hydra" / "config.yaml").st_mtime_ns
    run = run_cli("train", [*TINY, f"hydra.run.dir={run_dir}"], tmp_path)
    assert_paragraph(run, "holds a finished run")
    assert (run_dir / ".hydra" / "config.yaml").read_text() == "original: true\n"
    assert os.stat(run_dir / ".hydra" / "config.yaml").st_mtime_ns == stamp
    assert json.loads((run_dir / "results.json").read_text()) == {"status": "ok", "test/acc": 0.9}


@pytest.mark.slow
def test_vitlab_eval_without_ckpt_path_is_one_paragraph(tmp_path: Path) -> None:
    run = run_cli("eval", [], tmp_path)
    assert_paragraph(run, "vitlab-eval needs ckpt_path=")


def test_a_module_option_that_does_not_exist_names_the_options(tmp_path: Path) -> None:
    from vitlab.training.components import build_module

    cfg = compose_cfg([*TINY, "+module.label_smothing=0.1"])
    with open_dict(cfg):
        del cfg["hydra"]  # outside a Hydra run: no run directory to resolve
        cfg.paths.output_dir = str(tmp_path)
    with pytest.raises(TypeError) as raised:
        build_module(cfg, 10)
    message = str(unknown_key_error(raised.value, cfg))
    assert "module.label_smothing is not an option of module" in message and "module.label_smoothing" in message


def test_a_finished_directory_of_another_experiment_is_not_mistaken_for_this_one(tmp_path: Path) -> None:
    from vitlab.cli.in_place import RunFinished, open_attempt
    from vitlab.runs.state import RunState

    RunState(overrides=["optim.lr=0.001"]).write(tmp_path)
    (tmp_path / "results.json").write_text(json.dumps({"status": "ok"}))
    with pytest.raises(ConfigError, match="holds another experiment") as refused:
        open_attempt(tmp_path, ["optim.lr=0.5"])  # a sweep re-run in its directory with other values
    assert not isinstance(refused.value, RunFinished)
    with pytest.raises(RunFinished):
        open_attempt(tmp_path, ["optim.lr=1e-3"])


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
