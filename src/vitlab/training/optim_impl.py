"""Which torch implementation runs the optimiser step: `optim.fused: auto | true | false`.

torch's Adam, AdamW and SGD have three implementations of the same update: a per-tensor `for-loop`, a
multi-tensor `foreach` (torch's default on CUDA) and a `fused` kernel (one launch for all tensors; torch >= 2.4
has it on CPU too). timm's `create_optimizer_v2` hands `fused=` to these classes unchanged (its `adam`,
`adamw`, `sgd`, `momentum` and `nesterov` are torch's classes); its own optimisers (lamb, lion, ...) have none.

    auto   fused when the parameters are on CUDA and the optimiser has a fused kernel, else torch's default
    true   fused wherever torch supports it (any device torch lists, CPU included); refused for an
           optimiser without a fused implementation
    false  never fused (torch's default: foreach on CUDA, for-loop on CPU)
"""

from __future__ import annotations

from typing import Any

import torch
from timm.optim import get_optimizer_info, list_optimizers
from torch.optim import Optimizer

from vitlab.errors import ConfigError

FUSED_CLASSES = (torch.optim.Adam, torch.optim.AdamW, torch.optim.SGD)
FUSED_CHOICES = ("auto", True, False)


def _optimizer_class(opt: str) -> type | None:
    """The class timm builds for `opt` (`lookahead_<name>` wraps `<name>`), or None for a name timm lacks."""
    try:
        return get_optimizer_info(str(opt).lower().split("_")[-1]).opt_class
    except ValueError:
        return None  # timm's own error says it when the optimiser is built


def fused_optimizers() -> list[str]:
    """timm's optimiser names whose class has a fused torch implementation."""
    return [name for name in list_optimizers() if get_optimizer_info(name).opt_class in FUSED_CLASSES]


def fused_kwargs(opt: str, fused: Any, device: torch.device) -> dict[str, Any]:
    """The keyword arguments for the optimiser class: `{"fused": True}` or nothing (torch's default)."""
    if not any(type(fused) is type(choice) and fused == choice for choice in FUSED_CHOICES):
        raise ConfigError(
            f"optim.fused={fused!r} is not an option. Allowed: auto (fused on CUDA when the optimiser has a fused "
            "implementation), true (fused wherever torch supports it), false (never)."
        )
    supported = _optimizer_class(opt) in FUSED_CLASSES
    if fused is True and not supported:
        raise ConfigError(
            f"optim.fused=true: optim.opt={opt} has no fused implementation in torch. Allowed with "
            f"optim.fused=true: {', '.join(fused_optimizers())}; or set optim.fused=auto or false."
        )
    if fused is True or (fused == "auto" and supported and device.type == "cuda"):
        return {"fused": True}
    return {}


def implementation(optimizer: Optimizer) -> str:
    """`fused`, `foreach` or `for-loop`: what the optimiser's step runs (torch's own choice when foreach is
    left to it, `torch.optim.optimizer._default_to_fused_or_foreach`, as Adam/AdamW/SGD call it)."""
    inner = getattr(optimizer, "_base_optimizer", optimizer)  # timm's Lookahead
    group = inner.param_groups[0]
    if group.get("fused"):
        return "fused"
    foreach = group.get("foreach")
    if foreach is None and type(inner).__module__.startswith("torch.optim"):
        from torch.optim.optimizer import _default_to_fused_or_foreach

        params = [p for g in inner.param_groups for p in g["params"]]
        _, foreach = _default_to_fused_or_foreach(params, differentiable=bool(group.get("differentiable")))
    return "foreach" if foreach else "for-loop"
