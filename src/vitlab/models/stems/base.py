"""`TokenStem`: what every stem shares with timm's `PatchEmbed` (grid bookkeeping and output layout)."""

from __future__ import annotations

from timm.models.vision_transformer import VisionTransformer
from torch import Tensor, nn


class TokenStem(nn.Module):
    """Image (B, C, H, W) -> tokens (B, N, D), or (B, h, w, D) when the ViT uses a dynamic image size.

    Subclasses set `self.body` (a module mapping images to (B, D, h, w) feature maps) and `self.reduction`
    (the total stride). `grid_size`, `num_patches`, `img_size` and `patch_size` are those of timm's
    `PatchEmbed`, so position embeddings, geometry and timm's own code keep working.
    """

    body: nn.Module

    def __init__(self, img_size: tuple[int, int], reduction: int, grid_size: tuple[int, int], dynamic: bool) -> None:
        super().__init__()
        self.img_size, self.patch_size = img_size, (reduction, reduction)
        self.grid_size = grid_size
        self.num_patches = grid_size[0] * grid_size[1]
        self.dynamic_img_size = dynamic
        self.flatten = not dynamic

    def forward(self, x: Tensor) -> Tensor:
        if not self.dynamic_img_size and tuple(x.shape[-2:]) != tuple(self.img_size):
            raise ValueError(
                f"the stem was built for {self.img_size} images but got {tuple(x.shape[-2:])}; "
                "set data.img_size accordingly or model.backbone.dynamic_img_size=true"
            )
        x = self.body(x)
        if self.dynamic_img_size:
            return x.permute(0, 2, 3, 1)  # NHWC, what timm's _pos_embed expects with dynamic_img_size
        return x.flatten(2).transpose(1, 2)

    def feat_ratio(self, as_scalar: bool = True) -> int | tuple[int, int]:
        return self.patch_size[0] if as_scalar else self.patch_size


def stem_inputs(vit: VisionTransformer) -> tuple[tuple[int, int], int, int, bool]:
    """(img_size, patch_size, in_chans, dynamic) of the stem being replaced."""
    old = vit.patch_embed
    img = tuple(int(s) for s in old.img_size)
    patch = int(old.patch_size[0])
    in_chans = int(old.proj.in_channels) if hasattr(old, "proj") else 3
    return (img[0], img[1]), patch, in_chans, bool(getattr(vit, "dynamic_img_size", False))
