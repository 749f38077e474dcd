"""The timm seams vitlab attaches to; checked on every build so a timm upgrade that moves one fails loudly."""

from __future__ import annotations

from timm.models.vision_transformer import VisionTransformer
from torch import nn

# NOTE: stable since timm <= 0.9.16; `blocks[i].attn` is called with `attn_mask=` since timm 1.0.16.
BLOCK_SEAMS = ("norm1", "attn", "ls1", "drop_path1", "norm2", "mlp", "ls2", "drop_path2")
MODEL_SEAMS = (
    "patch_embed",
    "blocks",
    "norm",
    "head",
    "forward_features",
    "forward_head",
    "num_prefix_tokens",
)


# the VisionTransformer modules forward_features runs before the blocks, and those it and forward_head run after
# them, in order (the depths of layer-wise lr decay; what activation checkpointing leaves out)
BEFORE_BLOCKS = ("patch_embed", "cls_token", "reg_token", "pos_embed", "pos_drop", "patch_drop", "norm_pre")
AFTER_BLOCKS = ("norm", "fc_norm", "attn_pool", "head_drop", "head")


class SeamError(RuntimeError):
    """The installed timm no longer exposes a seam vitlab relies on."""


def check_seams(vit: nn.Module) -> None:
    """Assert that `vit` is a timm ViT with the attributes adapters attach to."""
    if not isinstance(vit, VisionTransformer):
        raise SeamError(f"expected a timm VisionTransformer, got {type(vit).__name__}")
    missing = [name for name in MODEL_SEAMS if not hasattr(vit, name)]
    missing += [f"blocks[0].{name}" for name in BLOCK_SEAMS if not hasattr(vit.blocks[0], name)]
    if not hasattr(vit.patch_embed, "grid_size"):
        missing.append("patch_embed.grid_size")
    if missing:
        raise SeamError(
            f"timm's VisionTransformer lacks {', '.join(missing)}; vitlab supports timm 1.0.x "
            "(see pyproject.toml) and attaches adapters at these seams."
        )
