"""The token geometry of a built ViT: what adapters need to know, read once off the backbone."""

from __future__ import annotations

from dataclasses import dataclass

from timm.models.vision_transformer import VisionTransformer


@dataclass(frozen=True)
class TokenGeometry:
    """Shape facts of a ViT's token sequence, handed to every adapter instead of threaded kwargs."""

    dim: int
    num_heads: int
    depth: int
    grid_size: tuple[int, int]
    num_prefix_tokens: int  # class + register tokens
    dynamic_img_size: bool = False

    @property
    def num_patches(self) -> int:
        return self.grid_size[0] * self.grid_size[1]

    @property
    def seq_len(self) -> int:
        """Tokens per image, prefix tokens included (what Linformer / MLP-Mixer need at construction)."""
        return self.num_patches + self.num_prefix_tokens


def geometry_of(vit: VisionTransformer) -> TokenGeometry:
    """Read the geometry off a built timm `VisionTransformer`."""
    grid = tuple(int(g) for g in vit.patch_embed.grid_size)
    return TokenGeometry(
        dim=int(vit.embed_dim),
        num_heads=int(getattr(vit.blocks[0].attn, "num_heads", 1)),  # FNet / MLP-Mixer mixers have no heads
        depth=len(vit.blocks),
        grid_size=(grid[0], grid[1]),
        num_prefix_tokens=int(vit.num_prefix_tokens),
        dynamic_img_size=bool(getattr(vit, "dynamic_img_size", False)),
    )
