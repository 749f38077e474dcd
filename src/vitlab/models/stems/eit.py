"""EIT's patch projection "EIT_P" (official `MrHaiPi/EIT/eit_model.py`; docs/papers/eit.md#stem):

    Conv2d(3, D, k, stride s, padding k//2) -> MaxPool2d(p, p) -> tokens, no norm

The convolution windows overlap (k > s), so every token sees a neighbourhood; presets 16/4/3 at 224 px
(57x57 conv grid -> 19x19 = 361 tokens) and 3/1/4 at 32 px (32x32 -> 8x8 = 64 tokens). Unlike the official
code (which computes `img // (s·p)` = 18 at 224 px), the grid here is the true output size, so a learned
position embedding, when asked for, has the right length at any image size.
"""

from __future__ import annotations

import torch
from timm.layers import trunc_normal_
from timm.models.vision_transformer import VisionTransformer
from torch import nn

from vitlab.errors import ConfigError
from vitlab.models.stems.base import TokenStem, stem_inputs


def eit_grid(size: int, kernel: int, stride: int, pool: int) -> int:
    """Tokens per side: the conv output ⌊(size + 2⌊k/2⌋ − k)/s⌋ + 1, then ⌊·/p⌋ for the max-pool."""
    return ((size + 2 * (kernel // 2) - kernel) // stride + 1) // pool


class EITStem(TokenStem):
    """Overlapping convolution + max-pooling; its token grid is computed, not assumed."""

    def __init__(
        self,
        img_size: tuple[int, int],
        embed_dim: int,
        kernel_size: int = 16,
        stride: int = 4,
        pool_size: int = 3,
        in_chans: int = 3,
        dynamic_img_size: bool = False,
    ) -> None:
        grid = (
            eit_grid(img_size[0], kernel_size, stride, pool_size),
            eit_grid(img_size[1], kernel_size, stride, pool_size),
        )
        if min(grid) < 1:
            raise ConfigError(
                f"model.stem (EIT kernel {kernel_size}, stride {stride}, pool {pool_size}) leaves no tokens at "
                f"data.img_size={img_size[0]}; use a larger image or a smaller stride/pool."
            )
        super().__init__(img_size, stride * pool_size, grid, dynamic_img_size)
        self.body = nn.Sequential(
            nn.Conv2d(in_chans, embed_dim, kernel_size, stride=stride, padding=kernel_size // 2),
            nn.MaxPool2d(pool_size, pool_size),
        )


def install_eit_stem(
    vit: VisionTransformer, kernel_size: int = 16, stride: int = 4, pool_size: int = 3
) -> VisionTransformer:
    """Replace `vit.patch_embed` by an `EITStem`; a learned position embedding is rebuilt for the new grid."""
    img_size, _, in_chans, dynamic = stem_inputs(vit)
    stem = EITStem(img_size, vit.embed_dim, kernel_size, stride, pool_size, in_chans, dynamic)
    vit.patch_embed = stem
    if vit.pos_embed is not None:
        tokens = stem.num_patches + (0 if vit.no_embed_class else vit.num_prefix_tokens)
        if vit.pos_embed.shape[1] != tokens:
            vit.pos_embed = nn.Parameter(trunc_normal_(torch.zeros(1, tokens, vit.embed_dim), std=0.02))
    return vit
