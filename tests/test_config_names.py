"""One name per idea across configs: renamed keys keep their old spelling for one release (it applies, logs one
deprecation line, and a conflicting pair is refused), and configs built on a base compose to what they composed
to before the base existed (the snapshots below were taken from the configs of that time)."""

from __future__ import annotations

import logging

import pytest
from omegaconf import OmegaConf

from conftest import compose_cfg
from vitlab.config_names import RENAMED, read_renamed, upgrade_config, upgrade_overrides
from vitlab.errors import ConfigError


def deprecation_lines(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING and "deprecated" in r.getMessage()]


# --- (a) old spellings: they apply once, say so once, and never silently lose against the new one ------------


def test_an_old_bench_key_on_the_command_line_applies_as_the_new_one_with_one_line(caplog) -> None:
    caplog.set_level(logging.WARNING, logger="vitlab")
    args = ["bench=attention", "attention.batch=3", "+attention.warmup=0", "attention.rounds=1"]
    upgraded = upgrade_overrides(args)
    assert upgraded == ["bench=attention", "attention.batch_size=3", "+attention.untimed_rounds=0", args[-1]]
    lines = deprecation_lines(caplog)
    assert len(lines) == 2 and "attention.batch is deprecated" in lines[0] and "attention.batch_size" in lines[0]
    cfg = compose_cfg(upgraded[:2], config_name="bench")
    assert cfg.attention.batch_size == 3 and "batch" not in cfg.attention


def test_an_old_and_a_new_bench_key_together_are_refused_unless_they_agree(caplog) -> None:
    caplog.set_level(logging.WARNING, logger="vitlab")
    with pytest.raises(ConfigError, match=r"model_bench\.batch=2 and model_bench\.batch_size=4 .* give only"):
        upgrade_overrides(["model_bench.batch=2", "model_bench.batch_size=4"])
    assert upgrade_overrides(["model_bench.batch=2", "model_bench.batch_size=2"]) == ["model_bench.batch_size=2"]


def test_every_old_bench_key_is_gone_from_the_config_and_its_new_key_is_there() -> None:
    cfg = compose_cfg(config_name="bench")
    for old, new in RENAMED.items():
        assert OmegaConf.select(cfg, old, default="absent") == "absent", old
        assert OmegaConf.select(cfg, new, default="absent") != "absent", new


def test_an_old_key_in_a_users_own_bench_config_is_moved_or_refused(caplog) -> None:
    caplog.set_level(logging.WARNING, logger="vitlab")
    cfg = compose_cfg(config_name="bench")
    OmegaConf.set_struct(cfg, False)
    cfg.overhead.warmup_steps = 5  # what a bench.yaml of the old release holds
    upgrade_config(cfg)
    assert cfg.overhead.untimed_steps == 5 and "warmup_steps" not in cfg.overhead
    assert len(deprecation_lines(caplog)) == 1
    cfg.overhead.warmup_steps, cfg.overhead.untimed_steps = 5, 3
    with pytest.raises(ConfigError, match=r"overhead\.warmup_steps=5 .* overhead\.untimed_steps=3"):
        upgrade_config(cfg, given={"overhead.untimed_steps"})  # set to 3 on the command line


def test_digits_light_augmentation_is_the_default_mapping_with_one_line(caplog) -> None:
    from vitlab.data.digits import DIGITS_AUGMENT, DigitsDataModule

    caplog.set_level(logging.WARNING, logger="vitlab")
    light = DigitsDataModule(augment="light")
    assert light.augment == DIGITS_AUGMENT and len(deprecation_lines(caplog)) == 1
    assert "data.augment=light is deprecated" in deprecation_lines(caplog)[0]
    cfg = compose_cfg()
    assert OmegaConf.to_container(cfg.data.augment) == {"rotate": 10.0, "translate": 0.1, "zoom": [0.9, 1.1]}
    composed = DigitsDataModule(**{k: v for k, v in cfg.data.items() if k != "_target_"})
    assert composed.augment == {"rotate": 10.0, "translate": 0.1, "zoom": [0.9, 1.1]}
    assert DigitsDataModule(augment="none").augment is None and DigitsDataModule(augment=None).augment is None
    assert DigitsDataModule(augment={"rotate": 0})._build()[0].transform.degrees == [0.0, 0.0]
    with pytest.raises(ConfigError, match=r"unknown keys \['hflip'\] for digits"):
        DigitsDataModule(augment={"hflip": 0.5})
    with pytest.raises(ConfigError, match="zoom two scale factors"):
        DigitsDataModule(augment={"zoom": [1.2, 0.8]})


def test_vtab_normalize_preset_applies_as_mean_and_std_once_and_conflicts_are_refused(caplog) -> None:
    from vitlab.data.vtab1k import NORMALISATIONS, _normalisation

    caplog.set_level(logging.WARNING, logger="vitlab")
    imagenet = NORMALISATIONS["imagenet"]
    assert _normalisation(*imagenet, None) == imagenet and not deprecation_lines(caplog)
    assert _normalisation(*imagenet, "inception") == ((0.5,) * 3, (0.5,) * 3)  # the defaults give way
    assert _normalisation((0.0,) * 3, (1.0,) * 3, "none") == NORMALISATIONS["none"]  # both say the same
    lines = deprecation_lines(caplog)
    assert len(lines) == 2 and "data.normalize=inception is deprecated" in lines[0] and "data.mean=[0.5" in lines[0]
    with pytest.raises(ConfigError, match=r"give only data\.mean and data\.std"):
        _normalisation((0.5,) * 3, (0.5,) * 3, "none")
    cfg = compose_cfg(["data=vtab1k", "data.normalize=none"])  # the old spelling still composes
    assert cfg.data.normalize == "none" and list(cfg.data.mean) == list(imagenet[0])


def test_optimized_metric_is_read_as_optimised_metric_once_and_conflicts_are_refused(caplog) -> None:
    caplog.set_level(logging.WARNING, logger="vitlab")
    assert read_renamed(compose_cfg(), "optimized_metric", "optimised_metric", "val/acc") == "val/acc"
    assert not deprecation_lines(caplog)
    old = compose_cfg(["optimized_metric=val/loss"])
    assert read_renamed(old, "optimized_metric", "optimised_metric", "val/acc") == "val/loss"
    assert len(deprecation_lines(caplog)) == 1
    both = compose_cfg(["optimized_metric=val/loss", "optimised_metric=val/acc_top5"])
    with pytest.raises(ConfigError, match=r"give only optimised_metric"):
        read_renamed(both, "optimized_metric", "optimised_metric", "val/acc")


# --- (b) bases: the configs built on them compose as before --------------------------------------------------


def node(overrides: list[str], key: str) -> dict:
    return OmegaConf.to_container(OmegaConf.select(compose_cfg(overrides), key), resolve=False)


def test_step_size_scalar_and_channel_differ_only_in_kind() -> None:
    scalar = node(["model/step_size=scalar"], "model.step_size")
    channel = node(["model/step_size=channel"], "model.step_size")
    assert scalar == {  # as model/step_size/scalar.yaml composed before model/step_size/_per_branch.yaml
        "_target_": "vitlab.models.adapters.step_size.install_step_sizes",
        "_partial_": True,
        "kind": "scalar",
        "init": 1.0,
        "init_std": 0.0,
        "positive": False,
        "l2_to_init": 0.0,
        "compose_layer_scale": False,
    }
    assert channel == {**scalar, "kind": "channel"}


def test_rope1d_and_rope2d_differ_only_in_kind() -> None:
    rope1d = node(["model/pos_embed=rope1d"], "model.pos_embed")
    assert rope1d == {
        "_target_": "vitlab.models.adapters.rope.install_rope",
        "_partial_": True,
        "kind": "1d",
        "base": 10000.0,
        "table_dtype": "model",
    }
    assert node(["model/pos_embed=rope2d"], "model.pos_embed") == {**rope1d, "kind": "2d"}


EIT_SIZES = {  # (embed_dim, depth, num_heads) of the official presets
    "eit_mini": (250, 5, 10),
    "eit_tiny": (330, 8, 10),
    "eit_base": (400, 10, 16),
    "eit_large": (464, 12, 16),
}


@pytest.mark.parametrize("preset", [*EIT_SIZES, "eit_cifar"])
def test_eit_presets_compose_as_before_their_base(preset: str) -> None:
    model = node([f"model={preset}"], "model")
    mini = node(["model=eit_mini"], "model")
    assert model["stem"]["_target_"] == "vitlab.models.stems.eit.install_eit_stem"
    assert model["mixer"]["_target_"] == "vitlab.models.mixers.eit.install_eit_mixer"
    assert model["pos_embed"]["_target_"] == "vitlab.models.adapters.pos_embed.remove_pos_embed"
    shared = {"mlp_ratio": 4.0, "qkv_bias": True}
    if preset == "eit_cifar":  # the official code's class defaults for small images
        expected = {"patch_size": 4, "embed_dim": 250, "depth": 5, "num_heads": 10, "drop_rate": 0.2}
        expected |= {"proj_drop_rate": 0.2, "attn_drop_rate": 0.15, "drop_path_rate": 0.2, **shared}
        assert model["stem"] | {"kernel_size": 16, "stride": 4, "pool_size": 3} == mini["stem"]
        assert (model["stem"]["kernel_size"], model["stem"]["stride"], model["stem"]["pool_size"]) == (3, 1, 4)
    else:
        dim, depth, heads = EIT_SIZES[preset]
        expected = {"patch_size": 16, "embed_dim": dim, "depth": depth, "num_heads": heads, "drop_path_rate": 0.0}
        expected |= shared
        assert model["stem"] == mini["stem"]
    assert {k: model["backbone"][k] for k in expected} == expected
    differing = {k for k in model["backbone"] if model["backbone"][k] != mini["backbone"][k]}
    assert differing <= set(expected) - set(shared)  # nothing else moved
    assert {k: v for k, v in model.items() if k not in ("backbone", "stem")} == {
        k: v for k, v in mini.items() if k not in ("backbone", "stem")
    }


IMAGE_DEFAULTS = {  # what data/_torchvision.yaml, imagefolder.yaml and tiny_imagenet.yaml all spelt out before
    "num_workers": 4,
    "val_fraction": 0.1,
    "split_seed": 0,
    "mean": [0.485, 0.456, 0.406],
    "std": [0.229, 0.224, 0.225],
    "crop_pct": 1.0,
    "pin_memory": True,  # since the loader defaults (docs/performance.md, Input pipeline): pinned on CUDA only
    "prefetch_factor": 2,
}
AUGMENT = {"hflip": 0.5, "scale": [0.6, 1.0], "randaugment": None, "color_jitter": None, "random_erasing": 0.0}


@pytest.mark.parametrize(
    ("option", "expected"),
    [
        (
            "cifar10",
            {
                "_target_": "vitlab.data.torchvision_sets.TorchvisionDataModule",
                "name": "cifar10",
                "root": "${paths.data_dir}",
                "download": False,
                "img_size": 32,
                "batch_size": 128,
                **IMAGE_DEFAULTS,
                "augment": AUGMENT,
            },
        ),
        (
            "imagefolder",
            {
                "_target_": "vitlab.data.imagefolder.ImageFolderDataModule",
                "root": "${paths.data_dir}/imagefolder",
                "img_size": 224,
                "batch_size": 64,
                **IMAGE_DEFAULTS,
                "skip_corrupt": False,
                "augment": {**AUGMENT, "scale": [0.08, 1.0]},
            },
        ),
        (
            "tiny_imagenet",
            {
                "_target_": "vitlab.data.tiny_imagenet.TinyImageNetDataModule",
                "root": "${paths.data_dir}/tiny-imagenet-200",
                "img_size": 64,
                "batch_size": 128,
                **IMAGE_DEFAULTS,
                "augment": AUGMENT,
            },
        ),
    ],
)
def test_image_data_sets_on_the_shared_base_compose_as_before(option: str, expected: dict) -> None:
    assert node([f"data={option}"], "data") == expected
