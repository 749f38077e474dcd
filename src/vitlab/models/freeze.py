"""`model.freeze`: which tensors of the pre-trained backbone are trained.

Transfer methods (step sizes, the PEFT baselines) train only what they add, plus the head. "Pre-trained"
means every tensor the stock timm backbone was built with, matched by name *and* shape after all adapters
are installed — and, with `model.backbone.weights`, loaded from them (the weights report's `loaded`). So a
mixer that keeps timm's `qkv`/`proj` keeps them frozen, a tensor a slot adds (a
Nyström `res_conv`, a step size, a prompt) or one whose shape a slot changed (a new stem) stays trainable,
and the classifier (timm's `head` or the head slot) is always trainable.
"""

from __future__ import annotations

from typing import Literal

import torch
from torch import nn

from vitlab.errors import ConfigError

Freeze = Literal["auto", "backbone", "none"]
FREEZE_OPTIONS = ("auto", "backbone", "none")
TIMM_HEAD_PREFIX = "head."


def parameter_shapes(vit: nn.Module) -> dict[str, torch.Size]:
    """Name -> shape of a module's parameters (the backbone's: taken right after timm built it)."""
    return {name: p.shape for name, p in vit.named_parameters()}


def resolve_freeze(freeze: str, transfer_slots: bool) -> bool:
    """Whether to freeze: `auto` freezes when a transfer slot (step_size or peft) is set."""
    if freeze not in FREEZE_OPTIONS:
        raise ConfigError(
            f"model.freeze={freeze!r} is not an option. Allowed: 'backbone' (train only what the slots add and "
            "the head), 'none' (train everything), 'auto' (backbone when model/step_size or model/peft is set)."
        )
    return freeze == "backbone" or (freeze == "auto" and transfer_slots)


def freeze_pretrained(vit: nn.Module, pretrained: dict[str, torch.Size]) -> int:
    """Set `requires_grad=False` on every parameter of `vit` that the stock backbone had (same name and
    shape), except timm's classifier. Returns the number of frozen elements."""
    frozen = 0
    for name, p in vit.named_parameters():
        if name.startswith(TIMM_HEAD_PREFIX) or pretrained.get(name) != p.shape:
            continue
        p.requires_grad_(False)
        frozen += p.numel()
    return frozen
