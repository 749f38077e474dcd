"""Position-embedding options for the `model/pos_embed` slot that need no new module (RoPE: `rope.py`)."""

from __future__ import annotations

import torch
from timm.models.vision_transformer import VisionTransformer
from torch import nn

from vitlab.errors import ConfigError


def remove_pos_embed(vit: VisionTransformer) -> VisionTransformer:
    """Drop the learned absolute position embedding (timm's `pos_embed='none'` on a built model).

    The tokens then carry no position information unless another adapter adds it (a conv stem, RoPE).
    Loaded weights for `pos_embed` are discarded with it.
    """
    vit.pos_embed = None  # nn.Module.__setattr__ unregisters the parameter; timm's _pos_embed skips None
    if vit.pos_drop.p > 0:  # timm also skips `pos_drop` then; keep the configured embedding dropout (ViX's emb_dropout)
        vit.norm_pre = nn.Sequential(vit.pos_drop, vit.norm_pre)
        vit.pos_drop = nn.Identity()
    return vit


def learned_pos_embed(vit: VisionTransformer, init_std: float | None = None) -> VisionTransformer:
    """Keep timm's learned absolute position embedding; optionally re-initialise it as N(0, init_std²).

    `init_std=null` keeps timm's initialisation (trunc-normal, std 0.02) or the loaded weights; the ViX code
    draws it from N(0, 1) (`torch.randn`), which its presets ask for with `init_std: 1.0`.
    """
    if vit.pos_embed is None:
        raise ConfigError(
            "model/pos_embed=learned, but this backbone has no learned position embedding "
            "(model.backbone.pos_embed / class_token settings, or a stem that removed it)."
        )
    if init_std is not None:
        with torch.no_grad():
            vit.pos_embed.normal_(0.0, init_std)
    return vit
