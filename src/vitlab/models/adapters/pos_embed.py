"""Position-embedding options for the `model/pos_embed` slot that need no new module."""

from __future__ import annotations

from timm.models.vision_transformer import VisionTransformer


def remove_pos_embed(vit: VisionTransformer) -> VisionTransformer:
    """Drop the learned absolute position embedding (timm's `pos_embed='none'` on a built model).

    The tokens then carry no position information unless another adapter adds it (a conv stem, RoPE).
    Loaded weights for `pos_embed` are discarded with it.
    """
    vit.pos_embed = None  # nn.Module.__setattr__ unregisters the parameter; timm's _pos_embed skips None
    return vit
