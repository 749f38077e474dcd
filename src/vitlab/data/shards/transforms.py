"""The transforms a packed set is trained with: its source config's, rebuilt from the manifest.

The source's data module cannot be built without its files (that is the point of packing), so the transform
of each kind of source is rebuilt here from the source's settings: timm's train/eval transforms for natural
images, the square resize of VTAB-1k, digits' tensor pipeline from the packed 8x8 originals.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from vitlab.data.torchvision_sets import IMAGENET_MEAN, IMAGENET_STD
from vitlab.data.transforms import build_transform

Transform = Callable[[Image.Image], Any]


def _rgb(transform: Callable) -> Transform:
    def apply(image: Image.Image) -> Any:
        return transform(image.convert("RGB"))  # as torchvision's default loader reads every image file

    return apply


def _digits(settings: Mapping[str, Any]) -> tuple[Transform, Transform]:
    from torchvision.transforms import v2

    from vitlab.data.digits import DIGITS_AUGMENT, digits_augment

    img_size = int(settings.get("img_size", 32))

    def tensor(image: Image.Image) -> torch.Tensor:  # what digits_images computes, one image at a time
        x = torch.from_numpy(np.asarray(image, dtype=np.float32)).reshape(1, 1, *image.size[::-1]) / 16.0
        if img_size != 8:
            x = F.interpolate(x, size=(img_size, img_size), mode="bilinear", align_corners=False)
        x = (x.clamp(0, 1) - 0.5) / 0.5
        return x[0].expand(3, -1, -1).contiguous()

    augment = digits_augment(settings.get("augment", DIGITS_AUGMENT))
    if augment is None:
        return tensor, tensor
    shift = float(augment["translate"])
    affine = v2.RandomAffine(
        degrees=float(augment["rotate"]),
        translate=(shift, shift),
        scale=tuple(float(z) for z in augment["zoom"]),
        fill=-1.0,
    )
    return (lambda image: affine(tensor(image))), tensor


def _vtab(settings: Mapping[str, Any]) -> tuple[Transform, Transform]:
    from vitlab.data.vtab1k import square_resize_transform

    img_size = int(settings["img_size"])
    mean, std = settings.get("mean", IMAGENET_MEAN), settings.get("std", IMAGENET_STD)
    eval_tf = square_resize_transform(img_size, mean, std)
    augment = settings.get("augment", "none")
    train_tf = eval_tf if augment in (None, "none") else build_transform(img_size, True, mean, std, augment)
    return _rgb(train_tf), _rgb(eval_tf)


def _images(settings: Mapping[str, Any], mean: Any = None, std: Any = None) -> tuple[Transform, Transform]:
    img_size = int(settings["img_size"])
    mean = mean or settings.get("mean", IMAGENET_MEAN)
    std = std or settings.get("std", IMAGENET_STD)
    train_tf = build_transform(img_size, True, mean, std, settings.get("augment"))
    eval_tf = build_transform(img_size, False, mean, std, crop_pct=float(settings.get("crop_pct", 1.0)))
    return _rgb(train_tf), _rgb(eval_tf)


def source_transforms(source: Mapping[str, Any]) -> tuple[Transform, Transform]:
    """(train, eval) transforms of a PIL image, as the source data config would build them."""
    kind = str(source.get("_target_", "")).rsplit(".", 1)[-1]
    if kind == "DigitsDataModule":
        return _digits(source)
    if kind == "VTAB1kDataModule":
        return _vtab(source)
    if kind == "FakeDataModule":  # fake images are normalised with 0.5 / 0.5 (vitlab.data.fake)
        return _images({**source, "augment": source.get("augment", "none")}, (0.5,) * 3, (0.5,) * 3)
    return _images(source)
