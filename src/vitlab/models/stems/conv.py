"""ViX's convolutional embedding ("Hybrid" models): three 3×3 convolutions 3→32→64→D, no activation between.

In the ViX code every convolution has stride 1 and patch size 1 (every pixel a token). For patch size p > 1
the strides are the prime factors of p, largest last, spread over the three convolutions (e.g. p=2: 2,1,1 as
in ViX's HybridMLPMixer; p=4: 2,2,1; p=16: 2,2,4); a convolution with stride s > 3 uses a kernel of size s.
The stem keeps the grid of the patch embedding it replaces, so `grid_size`/`num_patches` stay right.
"""

from __future__ import annotations

from collections.abc import Sequence

from timm.models.vision_transformer import VisionTransformer
from torch import nn

from vitlab.errors import ConfigError
from vitlab.models.stems.base import TokenStem, stem_inputs

ACTIVATIONS = {"none": nn.Identity, "relu": nn.ReLU, "gelu": nn.GELU}


def default_strides(patch_size: int, num_convs: int) -> list[int]:
    """Prime factors of `patch_size` on the first convolutions; extra factors multiply into the last one."""
    factors, rest, f = [], patch_size, 2
    while rest > 1:
        while rest % f == 0:
            factors.append(f)
            rest //= f
        f += 1
    strides = [1] * num_convs
    for i, factor in enumerate(factors):
        strides[min(i, num_convs - 1)] *= factor
    return strides


class ConvStem(TokenStem):
    """Conv(3×3) stack with total stride = patch size; optional activation between convolutions."""

    def __init__(
        self,
        img_size: tuple[int, int],
        patch_size: int,
        embed_dim: int,
        in_chans: int = 3,
        widths: Sequence[int] = (32, 64),
        strides: Sequence[int] | None = None,
        activation: str = "none",
        dynamic_img_size: bool = False,
    ) -> None:
        channels = [in_chans, *widths, embed_dim]
        strides = list(strides) if strides is not None else default_strides(patch_size, len(channels) - 1)
        product = 1
        for s in strides:
            product *= s
        if len(strides) != len(channels) - 1 or product != patch_size:
            raise ConfigError(
                f"model.stem.strides={strides} must have one entry per convolution ({len(channels) - 1}) and "
                f"multiply to the patch size {patch_size}."
            )
        if activation not in ACTIVATIONS:
            raise ConfigError(f"model.stem.activation={activation!r} is not one of: {', '.join(ACTIVATIONS)}.")
        grid = (img_size[0] // patch_size, img_size[1] // patch_size)
        super().__init__(img_size, patch_size, grid, dynamic_img_size)
        layers: list[nn.Module] = []
        for i, (c_in, c_out, s) in enumerate(zip(channels[:-1], channels[1:], strides, strict=True)):
            k = max(3, s)
            layers.append(nn.Conv2d(c_in, c_out, k, stride=s, padding=(k - 1) // 2))
            if i < len(strides) - 1:
                layers.append(ACTIVATIONS[activation]())
        self.body = nn.Sequential(*layers)


def install_conv_stem(
    vit: VisionTransformer,
    widths: Sequence[int] = (32, 64),
    strides: Sequence[int] | None = None,
    activation: str = "none",
    only_from_scratch: bool = False,
) -> VisionTransformer:
    """Replace `vit.patch_embed` by a `ConvStem` with the same image size, patch size and width.

    `only_from_scratch` (`model/stem=auto`, the default model's stem) is read by `build_classifier`: the stem
    is skipped when the backbone loads pre-trained weights, whose patch embedding is then kept."""
    img_size, patch, in_chans, dynamic = stem_inputs(vit)
    vit.patch_embed = ConvStem(img_size, patch, vit.embed_dim, in_chans, widths, strides, activation, dynamic)
    return vit
