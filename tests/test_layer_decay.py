"""Layer-wise lr decay (optim.layer_decay, vitlab.training.layer_decay): timm's groups for a stock ViT, every
slot's tensors at their block's depth, the scale honoured with and without a schedule, refusals, and the
table in results.json."""

from __future__ import annotations

import functools
import json
import logging
import math
from pathlib import Path

import pytest
import timm
import torch
import yaml
from hydra.utils import instantiate
from omegaconf import open_dict
from timm.optim import param_groups_layer_decay
from torch import nn

from conftest import TINY, compose_cfg
from vitlab.errors import ConfigError
from vitlab.models.backbone import create_backbone
from vitlab.models.build import build_classifier
from vitlab.models.classifier import Classifier
from vitlab.training.layer_decay import layer_decay_groups, layer_scale_table, tensor_depths
from vitlab.training.optim import build_optimizer, build_scheduler

TINY_VIT = functools.partial(
    create_backbone, name="vit_tiny_patch16_224", img_size=16, patch_size=4, embed_dim=32, depth=3, num_heads=2
)
OPTIM = {"opt": "adamw", "lr": 1e-3, "weight_decay": 0.05}


def by_name(groups: list[dict], names: dict[int, str]) -> dict[str, tuple[float, float]]:
    """name -> (lr_scale, weight_decay) of the group that holds it."""
    return {names[id(p)]: (round(g["lr_scale"], 12), g["weight_decay"]) for g in groups for p in g["params"]}


@pytest.mark.parametrize(
    "extra",
    [{}, {"reg_tokens": 2, "global_pool": "avg", "fc_norm": True, "pre_norm": True}, {"global_pool": "map"}],
    ids=["stock", "reg_fc_norm_pre_norm", "attn_pool"],
)
@pytest.mark.parametrize(("decay", "min_scale"), [(0.75, 0.0), (0.5, 0.2)])
def test_a_stock_timm_vit_gets_timms_groups_name_by_name(extra: dict, decay: float, min_scale: float) -> None:
    """Equal to timm tensor by tensor, but for one documented difference: timm's `group_matcher` puts the final
    `norm` with the last block (d^1), vitlab with the head (d^0), as BEiT's and MAE's reference code do."""
    torch.manual_seed(0)
    vit = timm.create_model(
        "vit_tiny_patch16_224", img_size=16, patch_size=4, embed_dim=32, depth=3, num_heads=2, num_classes=5, **extra
    )
    model = Classifier(vit)  # what build_classifier makes of a backbone without slots
    timm_groups = param_groups_layer_decay(
        vit, 0.05, no_weight_decay_list=vit.no_weight_decay(), layer_decay=decay, min_scale=min_scale
    )
    ours = layer_decay_groups(model, 1e-3, 0.05, decay, min_scale, model.no_weight_decay())
    theirs = by_name(timm_groups, {id(p): n for n, p in vit.named_parameters()})
    mine = by_name(ours, {id(p): n.removeprefix("backbone.") for n, p in model.named_parameters()})
    assert set(mine) == set(theirs) == {n for n, _ in vit.named_parameters()}
    final_norm = {n for n in mine if n.startswith("norm.")}
    assert {n: mine[n] for n in mine if n not in final_norm} == {n: theirs[n] for n in theirs if n not in final_norm}
    for name in final_norm:  # a LayerNorm with a class-token head; Identity (no tensors) under fc_norm or map
        assert mine[name] == (1.0, 0.0) and theirs[name] == (max(min_scale, decay), 0.0)
    assert len({(g["layer"], g["weight_decay"] > 0) for g in ours}) == len(ours)  # one group per layer and decay


SLOTS = [
    "~model/stem",
    "model/stem=conv",
    "model/stem=eit",
    *[f"model/mixer={m}" for m in ("softmax", "nystrom", "performer", "linformer", "fnet", "mlp_mixer", "eit")],
    "model/mixer=nystrom,model/mixer/kernel=performer",
    *[f"model/pos_embed={p}" for p in ("rope1d", "rope2d", "learned")],
    *[f"model/step_size={k}" for k in ("scalar", "channel", "dynamic")],
    "model/head=linear",
    "model/head=memory_ode",
    *[
        f"~model/stem,model/peft={m}"
        for m in ("lora", "lora_qv", "ssf", "adaptformer", "vpt_deep", "bitfit", "full", "linear_probe")
    ],
    "model=eit_cifar",
]


@functools.cache
def composed_model(overrides: str) -> Classifier:
    cfg = compose_cfg(["tiny=model", "model.backbone.depth=3", *overrides.split(",")])
    torch.manual_seed(0)
    return instantiate(cfg.model, num_classes=5)


@pytest.mark.parametrize("overrides", SLOTS)
def test_every_trainable_tensor_of_every_slot_sits_at_its_blocks_depth(overrides: str) -> None:
    model = composed_model(overrides)
    depths, layers = tensor_depths(model)
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert set(depths) == trainable and layers == 3
    names = {id(p): n for n, p in model.named_parameters()}
    for i, block in enumerate(model.backbone.blocks):
        inside = [names[id(p)] for p in block.parameters() if p.requires_grad]
        assert all(depths[n] == i + 1 for n in inside), overrides
    rest = trainable - {names[id(p)] for p in model.backbone.blocks.parameters()}
    # outside the blocks: the embedding side (0) or the head side (L + 1), nothing in between
    assert all((depths[n] == 0) == (".patch_embed." in f".{n}" or n.endswith(("_token", "pos_embed"))) for n in rest)
    assert all(depths[n] in (0, layers + 1) for n in rest)


@pytest.mark.parametrize(
    ("overrides", "name", "depth"),
    [
        ("model/stem=conv", "backbone.patch_embed.body.0.weight", 0),
        ("model/stem=eit", "backbone.cls_token", 0),
        ("model/mixer=eit", "backbone.blocks.1.attn.conv.weight", 2),
        ("model/mixer=nystrom", "backbone.blocks.0.attn.qkv.weight", 1),
        ("model/step_size=scalar", "backbone.blocks.2.ls2.h_param", 3),
        ("model/step_size=dynamic", "backbone.blocks.0.ls1.weight", 1),
        ("model/head=linear", "head.fc.weight", 4),
        ("model/head=memory_ode", "head.gamma.weight", 4),
        ("model/head=memory_ode", "head.field.rho", 4),
        ("~model/stem", "backbone.norm.weight", 4),
        ("~model/stem", "backbone.head.weight", 4),
        ("~model/stem,model/peft=vpt_deep", "backbone.blocks.1.vpt.prompts", 2),
        ("~model/stem,model/peft=ssf", "backbone.patch_embed.ssf.scale", 0),
        ("~model/stem,model/peft=ssf", "backbone.norm.ssf.shift", 4),
        ("~model/stem,model/peft=ssf", "backbone.blocks.2.mlp.fc1.ssf.scale", 3),
        ("~model/stem,model/peft=lora", "backbone.blocks.0.attn.qkv.lora_A.default.weight", 1),
        ("~model/stem,model/peft=adaptformer", "backbone.blocks.2.adaptmlp.up.weight", 3),
    ],
)
def test_named_tensors_get_the_depth_of_their_place(overrides: str, name: str, depth: int) -> None:
    depths, _ = tensor_depths(composed_model(overrides))
    assert depths[name] == depth, sorted(depths)


def test_the_groups_scales_are_decay_to_the_distance_from_the_head_with_the_floor() -> None:
    model = composed_model("model/head=linear")
    optimizer = build_optimizer(model, {**OPTIM, "layer_decay": 0.5, "layer_decay_min_scale": 0.1})
    table = layer_scale_table(optimizer)
    assert [row["layer"] for row in table] == [0, 1, 2, 3, 4]
    assert [row["lr_scale"] for row in table] == [0.1, 0.125, 0.25, 0.5, 1.0]  # 0.5^4 = 0.0625 -> the floor 0.1
    assert sum(row["tensors"] for row in table) == len(list(model.parameters()))
    assert all(g["lr"] == pytest.approx(1e-3 * g["lr_scale"]) for g in optimizer.param_groups)
    # weight decay exactly as without layer decay: not on 1-d tensors nor on no_weight_decay() names
    plain = build_optimizer(model, OPTIM)
    decayed = {id(p) for g in plain.param_groups if g["weight_decay"] > 0 for p in g["params"]}
    assert decayed == {id(p) for g in optimizer.param_groups if g["weight_decay"] > 0 for p in g["params"]}
    assert layer_scale_table(plain) is None


def test_the_scale_holds_without_a_schedule_and_is_applied_once_with_timms() -> None:
    torch.manual_seed(0)
    model = build_classifier(TINY_VIT, num_classes=5)
    optim = {"opt": "momentum", "lr": 0.1, "momentum": 0.0, "weight_decay": 0.0, "layer_decay": 0.5}
    optimizer = build_optimizer(model, optim)  # scheduler=none: the group lr itself is scaled
    weight = model.backbone.patch_embed.proj.weight  # depth 0 of 3 blocks: 0.5^4
    before = weight.detach().clone()
    model(torch.randn(2, 3, 16, 16)).sum().backward()
    optimizer.step()
    assert torch.allclose(weight.detach(), before - 0.1 * 0.5**4 * weight.grad, atol=1e-7)
    scheduler = build_scheduler(optimizer, {"sched": "cosine", "warmup_epochs": 0, "min_lr": 0.0}, 10, 100)
    scheduler.step_update(num_updates=50)
    base = 0.5 * 0.1 * (1 + math.cos(math.pi * 50 / 100))  # the cosine's lr at the half way point
    for group in optimizer.param_groups:
        assert group["lr"] == pytest.approx(base * group["lr_scale"]), group["layer"]


def test_a_model_frozen_but_its_head_trains_the_head_at_full_lr() -> None:
    model = composed_model("~model/stem,model/peft=linear_probe")
    table = layer_scale_table(build_optimizer(model, {**OPTIM, "layer_decay": 0.65}))
    assert table == [{"layer": 4, "lr_scale": 1.0, "tensors": 2}]


@pytest.mark.parametrize(
    ("key", "value"),
    [
        *[("layer_decay", v) for v in (0, 1.5, "0.7", True, float("nan"))],
        *[("layer_decay_min_scale", v) for v in (-0.1, 2, None)],
    ],
)
def test_the_builder_refuses_a_decay_outside_0_1(key: str, value: object) -> None:
    model = build_classifier(TINY_VIT, num_classes=5)
    with pytest.raises(ConfigError, match=f"optim.{key}={value!r} is not allowed: it must be a number in"):
        build_optimizer(model, {**OPTIM, "layer_decay": 0.75, key: value})


def test_a_tensor_no_block_owns_or_two_blocks_share_is_refused_by_name() -> None:
    model = build_classifier(TINY_VIT, num_classes=5)
    model.backbone.stray = nn.Parameter(torch.zeros(3))
    with pytest.raises(ConfigError, match=r"backbone\.stray is owned by no module the rule places"):
        build_optimizer(model, {**OPTIM, "layer_decay": 0.75})
    del model.backbone.stray
    blocks = model.backbone.blocks
    blocks[1].norm1.weight = blocks[0].norm1.weight  # one tensor in blocks 0 and 1
    with pytest.raises(ConfigError, match=r"backbone\.blocks\.0\.norm1\.weight is owned by modules at depths \[1, 2\]"):
        build_optimizer(model, {**OPTIM, "layer_decay": 0.75})


def test_vpt_prompts_per_block_are_the_draw_of_the_single_tensor_they_replaced() -> None:
    from vitlab.models.peft.vpt import vpt_deep

    torch.manual_seed(0)
    build_classifier(TINY_VIT, num_classes=5)  # the same draws as below, up to the prompts
    bound = math.sqrt(6.0 / (3 * 4 * 4 + 32))  # VPT's Xavier bound for patch 4, width 32
    expected = torch.empty(3, 10, 32).uniform_(-bound, bound)  # the one (L, P, D) tensor VPT used to hold
    torch.manual_seed(0)
    tuned = build_classifier(TINY_VIT, num_classes=5, peft=functools.partial(vpt_deep, num_tokens=10))
    assert torch.equal(torch.stack([block.vpt.prompts for block in tuned.backbone.blocks]), expected)


@pytest.mark.slow  # trains end to end (in-process)
@pytest.mark.parametrize("decay", [0.65, None])
def test_a_run_records_the_layer_scales_and_the_implementation(decay: float | None, tmp_path: Path, caplog) -> None:
    from vitlab.cli import train as train_cli
    from vitlab.cli.in_place import apply_attempt, open_attempt
    from vitlab.cli.runner import run_task
    from vitlab.compose import compose_config

    args = [*TINY, "+trainer.limit_train_batches=2", "+trainer.limit_val_batches=1", "test=false"]
    args.append(f"optim.layer_decay={'null' if decay is None else decay}")
    cfg = compose_config("train", args)  # as test_interrupts.py runs vitlab-train in this process
    with open_dict(cfg):
        cfg.paths.output_dir = str(tmp_path)
    attempt = open_attempt(tmp_path, args)
    apply_attempt(cfg, attempt)
    with caplog.at_level(logging.INFO, logger="vitlab"):
        run_task(cfg, train_cli.train, attempt)
    record = json.loads((tmp_path / "results.json").read_text())
    assert record["status"] == "ok" and record["optim/implementation"] == "for-loop", record
    if decay is None:
        assert "optim/layer_scales" not in record  # a finished run's results.json holds no nulls
        assert not any("layer-wise lr decay" in r.getMessage() for r in caplog.records)
        return
    table = record["optim/layer_scales"]  # tiny=model: 2 blocks, so layers 0..3
    assert [row["layer"] for row in table] == [0, 1, 2, 3]
    assert [row["lr_scale"] for row in table] == pytest.approx([0.65**3, 0.65**2, 0.65, 1.0])
    assert all(row["tensors"] > 0 for row in table)
    hparams = yaml.safe_load((tmp_path / "csv" / "hparams.yaml").read_text())  # the loggers' config (W&B's too)
    assert hparams["optim/layer_scales"] == table
    printed = [r.getMessage() for r in caplog.records if r.getMessage().startswith("layer-wise lr decay 0.65")]
    assert len(printed) == 1 and printed[0].count("\n") == len(table), printed
