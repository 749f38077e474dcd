"""Every option of every config group composes (found by globbing, so new options are covered at once)."""

from __future__ import annotations

import pytest
import pytorch_lightning as pl
import timm
import torch
from hydra.utils import instantiate
from omegaconf import open_dict
from pytorch_lightning.loggers import Logger

from conftest import CONFIGS, compose_cfg

# groups whose options live in sub-folders, selected with a path: experiment=vix/vit
PATH_OPTION_GROUPS = ("experiment",)
# not Hydra options of train.yaml: paper-table definitions, read by vitlab-reproduce (tests/test_reproduce_tables.py)
NOT_TRAIN_OPTIONS = ("paper",)
# nested groups, selected inside an option of their parent: model/mixer=softmax model/mixer/kernel=nystrom
PARENT_OF_NESTED = {"model/mixer/kernel": "model/mixer=softmax"}


def _group_and_option(path) -> tuple[str, str]:
    rel = path.relative_to(CONFIGS).with_suffix("")
    if rel.parts[0] in PATH_OPTION_GROUPS:
        return rel.parts[0], "/".join(rel.parts[1:])
    return str(rel.parent), rel.name


# group path (as used in overrides) -> option, for every YAML under configs/ except the two roots
OPTIONS = sorted(
    _group_and_option(p)
    for p in CONFIGS.rglob("*.yaml")
    if not (p.stem.startswith("_") and "???" in p.read_text())  # a base of other options (data/_torchvision)
    and p.parent != CONFIGS
    and p.parent.name != "hydra"
    and p.relative_to(CONFIGS).parts[0] not in NOT_TRAIN_OPTIONS
)
# groups whose options are whole-model slots: instantiate and run them too
MODEL_GROUPS = {
    "model/backbone",
    "model/stem",
    "model/pos_embed",
    "model/mixer",
    "model/mixer/kernel",
    "model/step_size",
    "model/head",
    "model/peft",
}
NEEDS_DOWNLOAD = {
    "cifar10",
    "cifar100",
    "svhn",
    "flowers102",
    "oxford_pets",
    "dtd",
    "stl10",
    "imagefolder",
    "tiny_imagenet",
    "vtab1k",
}


def test_there_are_options_in_every_core_group() -> None:
    groups = {g for g, _ in OPTIONS}
    for required in (
        "data",
        "model/backbone",
        "optim",
        "scheduler",
        "trainer",
        "logger",
        "callbacks",
        "debug",
    ):
        assert required in groups


@pytest.mark.parametrize(("group", "option"), OPTIONS, ids=[f"{g}={o}" for g, o in OPTIONS])
def test_option_composes(group: str, option: str, tmp_path) -> None:
    parent = [PARENT_OF_NESTED[group]] if group in PARENT_OF_NESTED else []
    cfg = compose_cfg([*parent, f"{group}={option}"])
    assert cfg.model._target_ == "vitlab.models.build.build_classifier"
    if group in MODEL_GROUPS:
        size = ["data.img_size=32"] if option in ("vit_tiny", "vit_small", "vit_base", "vit_base_in21k") else []
        weights = str(cfg.model.backbone.weights)
        if weights.startswith("hub:"):  # no downloads in tests: the pinned tag must exist, the weights are not loaded
            assert weights[4:] in timm.list_pretrained(), f"{weights} is not a timm pretrained tag"
            size.append("model.backbone.weights=none")
        cfg = compose_cfg([*parent, f"{group}={option}", *size] + ([] if size else ["tiny=model"]))
        model = instantiate(cfg.model, num_classes=7)
        img = cfg.data.img_size
        out = model(torch.randn(2, 3, img, img))
        assert out.shape == (2, 7) and out.isfinite().all()
    if group in ("callbacks", "logger"):
        with open_dict(cfg):
            cfg.paths.output_dir = str(tmp_path)  # outside a Hydra run there is no ${hydra:runtime.output_dir}
        expected = pl.Callback if group == "callbacks" else Logger
        for entry in (cfg.get(group) or {}).values():
            assert isinstance(instantiate(entry), expected), entry
    if group == "data" and option not in NEEDS_DOWNLOAD:
        dm = instantiate(cfg.data)
        dm.setup()
        x, y = dm.train_set[0]
        assert x.shape == (3, cfg.data.img_size, cfg.data.img_size) and 0 <= int(y) < dm.num_classes


def test_eval_config_composes() -> None:
    cfg = compose_cfg(["ckpt_path=some.ckpt"], config_name="eval")
    assert cfg.ckpt_path == "some.ckpt" and cfg.get("data") is None


def test_num_classes_is_not_typed_in_model_configs() -> None:
    for path in (CONFIGS / "model").rglob("*.yaml"):
        assert "num_classes:" not in path.read_text(), f"{path}: num_classes comes from the data module"


def test_every_model_slot_exists_and_only_the_conv_stem_is_on_by_default() -> None:
    cfg = compose_cfg()
    assert cfg.model.stem._target_ == "vitlab.models.stems.conv.install_conv_stem"  # make train: hybrid ViT
    for slot in ("pos_embed", "mixer", "step_size", "head", "peft"):
        assert slot in cfg.model and cfg.model[slot] is None
    for slot in ("stem", "pos_embed", "mixer", "step_size", "head", "peft"):
        assert (CONFIGS / "model" / slot).is_dir()
