"""Test-time augmentation (`eval.tta`): the logits of several views of each test image, averaged.

- `none`: the image as the eval transform made it (1 forward view).
- `flip`: the image and its horizontal mirror (2 views), as in Simonyan & Zisserman 2015 (VGG).
- `multicrop`: five crops of the already-transformed image, the centre and the four corners, each `CROP_FRACTION`
  of the side, resized back to the input size (bilinear, antialiased) so the model sees its training resolution:
  the five-crop convention of Krizhevsky et al. 2012 (AlexNet) and torchvision's `FiveCrop`, taken on the eval
  tensor instead of the raw image so that it needs no second data pipeline (5 views).

The *logits* are averaged, not the probabilities (mmpretrain's `AverageClsScoreTTA` and VGG average softmax
scores): the mean of logits is again a logit vector, so the loss, NLL, ECE and every downstream metric read it
exactly as they read one view's logits; its softmax is the normalised geometric mean of the views' probabilities.
The arg-max of the two rarely differs; calibration can (a geometric mean is less confident where views disagree).
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import Tensor

from vitlab.errors import ConfigError

TTA_MODES = ("none", "flip", "multicrop")
CROP_FRACTION = 0.875  # timm's default crop_pct: a crop keeps 87.5 % of the side (about 77 % of the area)


def check_tta(mode: object) -> str:
    """`mode` if it is one of `TTA_MODES`, else the one-paragraph refusal naming `eval.tta`."""
    if isinstance(mode, str) and mode in TTA_MODES:
        return mode
    raise ConfigError(
        f"eval.tta={mode!r} is not an option. Allowed: {', '.join(TTA_MODES)} (none: one view; flip: the image and "
        "its horizontal mirror; multicrop: the centre and four corner crops; the views' logits are averaged, "
        "see docs/evaluation.md)."
    )


def five_crops(x: Tensor, fraction: float = CROP_FRACTION) -> list[Tensor]:
    """Centre, top-left, top-right, bottom-left, bottom-right crops of `fraction` of each side of a (B, C, H, W)
    batch, each resized back to (H, W)."""
    height, width = x.shape[-2:]
    h, w = max(1, round(height * fraction)), max(1, round(width * fraction))
    top, left = (height - h) // 2, (width - w) // 2
    corners = [(top, left), (0, 0), (0, width - w), (height - h, 0), (height - h, width - w)]
    crops = [x[..., i : i + h, j : j + w] for i, j in corners]
    return [F.interpolate(c, size=(height, width), mode="bilinear", align_corners=False, antialias=True) for c in crops]


def views(x: Tensor, mode: str) -> list[Tensor]:
    """The views of a (B, C, H, W) batch that `mode` averages over."""
    mode = check_tta(mode)
    if mode == "flip":
        return [x, x.flip(-1)]
    if mode == "multicrop":
        return five_crops(x)
    return [x]


def view_count(mode: str) -> int:
    """Forward passes per test batch under `mode` (1, 2 or 5)."""
    return {"none": 1, "flip": 2, "multicrop": 5}[check_tta(mode)]


def tta_logits(model: Callable[[Tensor], Tensor], x: Tensor, mode: str) -> Tensor:
    """The mean over `views(x, mode)` of `model(view)`; one forward pass per view (a batch of B each, so the
    memory of a step does not grow with the number of views); averaged in float32 under mixed precision."""
    outputs = [model(view) for view in views(x, mode)]
    return outputs[0] if len(outputs) == 1 else torch.stack([o.float() for o in outputs]).mean(dim=0)
