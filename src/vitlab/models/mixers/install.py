"""The `model/mixer` adapter: replace every block's `attn` with a vitlab mixer, keeping loaded weights."""

from __future__ import annotations

import logging
from collections.abc import Callable

import torch
from timm.models.vision_transformer import Attention, VisionTransformer
from torch import nn

from vitlab.errors import ConfigError
from vitlab.models.geometry import TokenGeometry, geometry_of
from vitlab.models.mixers.attention import KernelFactory, QKVAttention

log = logging.getLogger(__name__)

MixerFactory = Callable[..., nn.Module]  # called as mixer(geo=...), for mixers without q/k


def install_mixer(
    vit: VisionTransformer,
    kernel: KernelFactory | None = None,
    mixer: MixerFactory | None = None,
    proj_drop: float | None = None,
) -> VisionTransformer:
    """Swap `blocks[i].attn` for `QKVAttention(kernel)` or for `mixer(geo=geo)` (exactly one is given).

    The q/k/v and output projections of the replaced timm attention (random or pre-trained) are copied
    into the new module wherever the shapes agree, so `weights=file:...` and a mixer compose.
    `proj_drop`: dropout after the attention's output projection; None keeps the backbone's
    `proj_drop_rate`, which timm also puts in the MLP (the ViX code's Nyström and Performer layers have none
    there while their MLPs drop).
    """
    if (kernel is None) == (mixer is None):
        raise ConfigError("model.mixer needs exactly one of `kernel` (attention) or `mixer` (FNet, MLP-Mixer).")
    if proj_drop is not None and (kernel is None or not 0 <= proj_drop < 1):
        raise ConfigError(
            f"model.mixer.proj_drop={proj_drop!r} is not allowed: it must be a number in [0, 1) or null (the "
            "backbone's proj_drop_rate), and only attention mixers (softmax, nystrom, performer, linformer) have it."
        )
    geo = geometry_of(vit)
    for block in vit.blocks:
        old = block.attn
        new = attention_like(old, geo, kernel, proj_drop) if kernel is not None else mixer(geo=geo)
        copy_projections(old, new)
        block.attn = new
    return vit


def attention_like(
    old: nn.Module, geo: TokenGeometry, kernel: KernelFactory, proj_drop: float | None = None
) -> QKVAttention:
    """A `QKVAttention` with the sizes, biases and dropouts of `old` (a timm or vitlab attention); `proj_drop`
    replaces the output projection's dropout rate when given."""
    if isinstance(old, Attention):
        unsupported = [n for n in ("q_norm", "k_norm", "norm") if not isinstance(getattr(old, n), nn.Identity)]
        if getattr(old, "gate", None) is not None:
            unsupported.append("gate")
        if unsupported:
            raise ConfigError(
                f"this backbone's attention uses {', '.join(unsupported)}, which vitlab mixers do not implement; "
                "choose a backbone without qk_norm/scale_norm/gated attention, or leave model.mixer null."
            )
    if not hasattr(old, "qkv"):
        raise ConfigError(f"model.mixer with a kernel needs an attention with q/k/v; blocks hold {type(old).__name__}.")
    attn_drop = old.attn_drop.p if isinstance(old, Attention) else getattr(old.kernel, "attn_drop", 0.0)
    built = kernel(geo=geo, num_heads=old.num_heads, head_dim=old.head_dim, attn_drop=float(attn_drop))
    return QKVAttention(
        dim=old.qkv.in_features,
        num_heads=old.num_heads,
        kernel=built,
        head_dim=old.head_dim,
        qkv_bias=old.qkv.bias is not None,
        proj_bias=old.proj.bias is not None,
        proj_drop=old.proj_drop.p if proj_drop is None else proj_drop,
    )


@torch.no_grad()
def copy_projections(old: nn.Module, new: nn.Module) -> None:
    """Copy `qkv` and `proj` from `old` to `new` where both have them with equal shapes."""
    for name in ("qkv", "proj"):
        src, dst = getattr(old, name, None), getattr(new, name, None)
        if not isinstance(src, nn.Linear) or not isinstance(dst, nn.Linear):
            continue
        if src.weight.shape != dst.weight.shape or (src.bias is None) != (dst.bias is None):
            log.info(
                "mixer: %s shapes differ (%s -> %s); kept the new initialisation",
                name,
                src.weight.shape,
                dst.weight.shape,
            )
            continue
        dst.load_state_dict(src.state_dict())
