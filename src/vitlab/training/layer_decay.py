"""Layer-wise learning-rate decay (BEiT, Bao et al. 2022; timm's `param_groups_layer_decay`) for any vitlab model.

`optim.layer_decay=d` trains a tensor at depth `k` of a ViT with L blocks with the learning rate
`lr · max(optim.layer_decay_min_scale, d^(L+1−k))`. The depth comes from the module tree, i.e. which module
of the backbone owns the tensor, not from its name, so a tensor a slot adds inside a block follows its block:

    depth 0      what `VisionTransformer.forward_features` runs before the blocks: `patch_embed` (timm's or a
                 vitlab stem, with anything attached to it, e.g. SSF's scale/shift), `cls_token`,
                 `reg_token`, `pos_embed`, `pos_drop`, `patch_drop`, `norm_pre`
    depth i + 1  every tensor owned by `blocks[i]` (timm's, a mixer's, step sizes, EIT's convolution,
                 LoRA/SSF/AdaptFormer tensors, VPT-deep prompts of that block)
    depth L + 1  what runs after the blocks: `norm`, `fc_norm`, `attn_pool`, `head_drop`, timm's `head`,
                 and the `Classifier`'s own head slot (linear, memory-ODE)

A trainable tensor owned by none of these, or by several depths (one tensor shared between two blocks), is
refused with a `ConfigError` naming it: a guess would silently train it at the wrong rate. For a stock timm
ViT this is the grouping of timm's `VisionTransformer.group_matcher` (tests/test_layer_decay.py checks it
tensor by tensor against `timm.optim.param_groups_layer_decay`).

Weight decay is exempted exactly as without layer decay (timm's rule): tensors with ndim <= 1 and the names
`no_weight_decay()` lists (fnmatch patterns). Each param group carries `layer`, `lr_scale` (timm's key, which
timm's schedulers multiply into every lr they set), `lr = lr_scale · lr` (so the scale holds without a
schedule, `scheduler=none`) and `initial_lr = lr` (the unscaled base a timm scheduler starts from; without
it the scheduler would take the scaled lr as its base and apply the scale twice).
"""

from __future__ import annotations

import fnmatch
from collections import defaultdict
from collections.abc import Collection
from typing import Any

from torch import nn
from torch.optim import Optimizer

from vitlab.errors import ConfigError
from vitlab.models.seams import AFTER_BLOCKS, BEFORE_BLOCKS


def check_layer_decay(decay: Any, min_scale: Any) -> None:
    """Refuse a decay outside (0, 1] or a minimum scale outside [0, 1] (also checked at config time by
    `vitlab.cli.rules.check_optim`; here for a module built from Python or an older checkpoint)."""
    if decay is not None and not _number_in(decay, 0.0, 1.0, open_low=True):
        raise ConfigError(
            f"optim.layer_decay={decay!r} is not allowed: it must be a number in (0, 1] (or null: no layer-wise "
            "decay). Block i of L is trained at lr x layer_decay^(L-i), the head at lr; e.g. 0.65 or 0.75."
        )
    if not _number_in(min_scale, 0.0, 1.0):
        raise ConfigError(
            f"optim.layer_decay_min_scale={min_scale!r} is not allowed: it must be a number in [0, 1] (the "
            "smallest lr factor any layer gets; 0 = no floor)."
        )


def _number_in(value: Any, low: float, high: float, open_low: bool = False) -> bool:
    if isinstance(value, bool) or not isinstance(value, int | float) or value != value:  # NaN != NaN
        return False
    return (value > low if open_low else value >= low) and value <= high


def tensor_depths(model: nn.Module) -> tuple[dict[str, int], int]:
    """The depth (rule above) of every trainable tensor by name, and L, the number of blocks.

    `model` is a vitlab `Classifier` (its `backbone` and `head`) or a bare timm ViT.
    """
    backbone = getattr(model, "backbone", model)
    blocks = getattr(backbone, "blocks", None)
    if not isinstance(blocks, nn.Sequential | nn.ModuleList) or len(blocks) == 0:
        raise ConfigError(
            f"optim.layer_decay needs a ViT with a sequence of blocks (`blocks`); {type(backbone).__name__} has "
            "none. Set optim.layer_decay=null."
        )
    depth_count = len(blocks)
    owners: dict[int, set[int]] = defaultdict(set)  # id(tensor) -> the depths of the modules that own it

    def claim(owner: Any, depth: int) -> None:
        tensors = [owner] if isinstance(owner, nn.Parameter) else owner.parameters() if owner is not None else ()
        for tensor in tensors:
            owners[id(tensor)].add(depth)

    for name in BEFORE_BLOCKS:
        claim(getattr(backbone, name, None), 0)
    for i, block in enumerate(blocks):
        claim(block, i + 1)
    for name in AFTER_BLOCKS:
        claim(getattr(backbone, name, None), depth_count + 1)
    if backbone is not model:
        claim(getattr(model, "head", None), depth_count + 1)  # the Classifier's head slot
    depths: dict[str, int] = {}
    for name, tensor in model.named_parameters():
        if not tensor.requires_grad:
            continue
        found = sorted(owners.get(id(tensor), ()))
        if len(found) != 1:
            where = f"is owned by modules at depths {found}" if found else "is owned by no module the rule places"
            raise ConfigError(
                f"optim.layer_decay: the trainable tensor {name} {where}. A tensor must belong to exactly one "
                f"of: {', '.join(BEFORE_BLOCKS)} (depth 0), blocks[i] (depth i+1), {', '.join(AFTER_BLOCKS)} or "
                f"the head slot (depth L+1 = {depth_count + 1}). Attach it to the module that uses it, freeze it, "
                "or set optim.layer_decay=null."
            )
        depths[name] = found[0]
    return depths, depth_count


def layer_decay_groups(
    model: nn.Module,
    lr: float,
    weight_decay: float,
    decay: float,
    min_scale: float = 0.0,
    no_weight_decay: Collection[str] = (),
) -> list[dict[str, Any]]:
    """Param groups, one per (depth, decayed or not), in the order of `model.named_parameters()`."""
    check_layer_decay(decay, min_scale)
    depths, depth_count = tensor_depths(model)
    groups: dict[tuple[int, bool], dict[str, Any]] = {}
    for name, tensor in model.named_parameters():
        if not tensor.requires_grad:
            continue
        depth = depths[name]
        exempt = tensor.ndim <= 1 or any(fnmatch.fnmatch(name, pattern) for pattern in no_weight_decay)
        scale = max(float(min_scale), float(decay) ** (depth_count + 1 - depth))
        group = groups.setdefault(
            (depth, exempt),
            {
                "params": [],
                "layer": depth,
                "lr_scale": scale,
                "weight_decay": 0.0 if exempt else weight_decay,
                "lr": lr * scale,
                "initial_lr": lr,
            },
        )
        group["params"].append(tensor)
    return list(groups.values())


def layer_scale_table(optimizer: Optimizer) -> list[dict[str, Any]] | None:
    """`[{layer, lr_scale, tensors}]` for the layers that have trainable tensors (from the param groups that
    `layer_decay_groups` made), or None when the optimiser has no layer-wise decay."""
    rows: dict[int, dict[str, Any]] = {}
    for group in optimizer.param_groups:  # timm's Lookahead shares its optimiser's groups
        if "layer" not in group:
            return None
        row = rows.setdefault(group["layer"], {"layer": group["layer"], "lr_scale": group["lr_scale"], "tensors": 0})
        row["tensors"] += len(group["params"])
    return [rows[layer] for layer in sorted(rows)] or None


def format_table(table: list[dict[str, Any]], decay: float, min_scale: float) -> str:
    """The table as a few lines of text for the run log."""
    lines = [f"layer-wise lr decay {decay:g} (min scale {min_scale:g}):  layer  lr_scale  tensors"]
    lines += [f"  {row['layer']:>5}  {row['lr_scale']:8.4g}  {row['tensors']:>7}" for row in table]
    return "\n".join(lines)
