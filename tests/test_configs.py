"""Every option of every config group composes (found by globbing, so new options are covered at once)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import pytorch_lightning as pl
import timm
import torch
from hydra.utils import get_object, instantiate
from omegaconf import DictConfig, ListConfig, OmegaConf, open_dict
from pytorch_lightning.loggers import Logger

from conftest import CONFIGS, compose_cfg
from helpers import fake_layouts
from vitlab.errors import ConfigError
from vitlab.models.geometry import geometry_of

# groups whose options live in sub-folders, selected with a path: experiment=vix/vit
PATH_OPTION_GROUPS = ("experiment",)
# not Hydra options of train.yaml: paper-table definitions, read by vitlab-reproduce (tests/test_reproduce_tables.py);
# vitlab-eval's probe= and analyse= groups (composed with eval.yaml in tests/test_fewshot.py, test_attention_maps.py)
NOT_TRAIN_OPTIONS = ("paper", "probe", "analyse")
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
# data options read from disk that never download: checked on a miniature folder in their layout
FAKE_LAYOUTS = {
    "imagefolder": lambda cfg, tmp: fake_layouts.image_folder(Path(cfg.data.root), per_class=10),
    "tiny_imagenet": lambda cfg, tmp: fake_layouts.tiny_imagenet(Path(cfg.data.root)),
    "vtab1k": lambda cfg, tmp: fake_layouts.vtab_task(Path(cfg.data.root) / cfg.data.task),
}
# slot options whose model has the structure of the slot switched off, by design: what they do instead
SAME_STRUCTURE_AS_OFF = {
    # keeps timm's learned position embedding (init_std=null: timm's own initialisation); it must stay and train
    "vitlab.models.adapters.pos_embed.learned_pos_embed": lambda model: (
        isinstance(model.backbone.pos_embed, torch.nn.Parameter) and model.backbone.pos_embed.requires_grad
    ),
    # full fine-tuning: every tensor trains although freeze=auto freezes the backbone whenever peft is set
    "vitlab.models.peft.selective.full": lambda model: all(p.requires_grad for p in model.parameters()),
}


def _package(path: Path, group: str) -> str:
    """Where the option's keys land: the `# @package` header, else the group path (model/mixer -> model.mixer)."""
    for line in path.read_text().splitlines():
        if line.startswith("# @package"):
            package = line.split()[-1]
            return "" if package == "_global_" else package
    return group.replace("/", ".")


def _leaves(node: Any, prefix: str) -> Iterator[tuple[str, Any]]:
    if isinstance(node, dict):  # an empty mapping sets nothing (an option made only of its defaults list)
        for key, value in node.items():
            yield from _leaves(value, f"{prefix}.{key}" if prefix else str(key))
    else:
        yield prefix, node


def own_values(group: str, option: str) -> dict[str, Any]:
    """The values the option's YAML file sets itself, by their key in the composed config: not the defaults
    list, not the keys of the sub-groups it selects (they hold those groups' options), no interpolations."""
    path = CONFIGS / group / f"{option}.yaml"
    raw = OmegaConf.to_container(OmegaConf.load(path), resolve=False)
    subgroups = {str(k).split()[-1] for entry in raw.pop("defaults", []) if isinstance(entry, dict) for k in entry}
    raw = {k: v for k, v in raw.items() if k not in subgroups and k != "hydra"}  # compose_cfg has its own hydra
    values = dict(_leaves(raw, _package(path, group)))
    return {k: v for k, v in values.items() if not (isinstance(v, str) and ("${" in v or v == "???"))}


def _qualname(obj: object) -> str:
    return f"{type(obj).__module__}.{type(obj).__qualname__}"


def _structure(model: torch.nn.Module) -> tuple:
    """What a slot can change: module classes by name, parameters' shapes and trainability, the position table."""
    modules = tuple((name, _qualname(m)) for name, m in model.named_modules())
    params = tuple((name, tuple(p.shape), p.requires_grad) for name, p in model.named_parameters())
    return modules, params, getattr(model.backbone, "pos_embed", None) is None


def assert_builds_what_it_selects(group: str, cfg, model: torch.nn.Module, off: torch.nn.Module | None) -> None:
    """The built model holds what the option names: an instance of every class `_target_` of its node (one per
    block for mixers and kernels), the backbone's sizes, and a structure different from the slot switched off."""
    node = OmegaConf.select(cfg, group.replace("/", "."))
    blocks = len(model.backbone.blocks)
    for sub in (node, node.get("kernel"), node.get("mixer")):
        target = sub.get("_target_") if isinstance(sub, DictConfig) else None
        if target is None or not isinstance(get_object(target), type):
            continue
        built = sum(_qualname(m) == target for m in model.modules())
        expected = blocks if group.startswith("model/mixer") else 1
        assert built == expected, f"{group}: {built} instances of {target}, expected {expected}"
    if group == "model/backbone":
        geo = geometry_of(model.backbone)
        assert model.backbone.pretrained_cfg["architecture"] == node.name
        assert geo.grid_size == (cfg.data.img_size // node.patch_size,) * 2
        for key, built in (("embed_dim", geo.dim), ("depth", geo.depth), ("num_heads", geo.num_heads)):
            assert node.get(key) in (None, built), f"model.backbone.{key}={node.get(key)} but the ViT has {built}"
    elif off is not None:
        if node._target_ in SAME_STRUCTURE_AS_OFF:
            assert _structure(model) == _structure(off) and SAME_STRUCTURE_AS_OFF[node._target_](model), group
        else:
            assert _structure(model) != _structure(off), f"{group}: the model is the one without the slot"


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
def test_option_composes(group: str, option: str, tmp_path, request) -> None:
    parent = [PARENT_OF_NESTED[group]] if group in PARENT_OF_NESTED else []
    data_dir = [f"paths.data_dir={tmp_path / 'data'}"] if group == "data" else []
    if (group, option) == ("data", "shards"):  # sized from a packed set's manifest: it needs one
        data_dir.append(f"data.root={request.getfixturevalue('packed_digits')}")
    cfg = compose_cfg([*parent, f"{group}={option}", *data_dir])
    assert cfg.model._target_ == "vitlab.models.build.build_classifier"
    choice = cfg.hydra.runtime.choices[group]
    assert choice == option, f"{group}={option} composed, but the config says {group}={choice}"
    given = {o.partition("=")[0] for o in data_dir}
    for key, value in own_values(group, option).items():  # the option's own settings reach the config
        if key in given:  # set by this test on the command line
            continue
        composed = OmegaConf.select(cfg, key, throw_on_missing=False)
        composed = OmegaConf.to_container(composed) if isinstance(composed, DictConfig | ListConfig) else composed
        assert composed == value, f"{group}={option}: {key} is {composed!r}, the option sets {value!r}"
    if group in MODEL_GROUPS:
        size = ["data.img_size=32"] if option in ("vit_tiny", "vit_small", "vit_base", "vit_base_in21k") else []
        weights = str(cfg.model.backbone.weights)
        if weights.startswith("hub:"):  # no downloads in tests: the pinned tag must exist, the weights are not loaded
            assert weights[4:] in timm.list_pretrained(), f"{weights} is not a timm pretrained tag"
            size.append("model.backbone.weights=none")
        overrides = [*parent, f"{group}={option}", *size] + ([] if size else ["tiny=model"])
        cfg = compose_cfg(overrides)
        model = instantiate(cfg.model, num_classes=7)
        img = cfg.data.img_size
        out = model(torch.randn(2, 3, img, img))
        assert out.shape == (2, 7) and out.isfinite().all()
        slot = group.removeprefix("model/")
        off = None
        if slot in ("stem", "pos_embed", "mixer", "step_size", "head", "peft"):  # the same model, the slot off
            off = instantiate(compose_cfg([*overrides, f"model.{slot}=null"]).model, num_classes=7)
        assert_builds_what_it_selects(group, cfg, model, off)
    if group in ("callbacks", "logger"):
        with open_dict(cfg):
            cfg.paths.output_dir = str(tmp_path)  # outside a Hydra run there is no ${hydra:runtime.output_dir}
        expected = pl.Callback if group == "callbacks" else Logger
        for entry in (cfg.get(group) or {}).values():
            assert isinstance(instantiate(entry), expected), entry
    if group == "data":
        assert get_object(cfg.data._target_).__module__.startswith("vitlab.data.")
        if option in FAKE_LAYOUTS:
            FAKE_LAYOUTS[option](cfg, tmp_path)
        dm = instantiate(cfg.data)
        if option not in FAKE_LAYOUTS and dm.__class__.__name__ == "TorchvisionDataModule":
            # offline, the one check left is that a missing download is a clear error, then the sample is skipped
            assert dm.name == option and dm.num_classes > 1
            with pytest.raises(ConfigError, match=r"data\.download=true"):
                dm.setup()
            pytest.skip(f"data={option}: torchvision's files are downloaded only with data.download=true (network)")
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
