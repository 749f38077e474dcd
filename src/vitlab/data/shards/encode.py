"""The samples of a data module's splits as (encoded bytes, extension, label, (width, height)), in read order.

Files (class folders, Tiny ImageNet, VTAB-1k, Flowers-102, DTD, Oxford Pets) keep their original bytes.
Sets held as arrays (CIFAR, SVHN, STL-10, generated fake images) have no encoded original: their images are
written as lossless PNG. Digits are written at their native 8x8 with the raw 0..16 stroke values as a
grayscale PNG, so a packed digits run reads exactly the numbers the in-memory run starts from.
"""

from __future__ import annotations

import io
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image
from torch.utils.data import Dataset

from vitlab.data.fingerprint import unwrap

Sample = tuple[bytes, str, int, tuple[int, int]]


def png_bytes(image: Image.Image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


def header_size(data: bytes) -> tuple[int, int]:
    """(width, height) from the image header, without decoding the pixels."""
    with Image.open(io.BytesIO(data)) as image:
        return image.size


def _image_files(base: Any) -> list[tuple[Any, int]] | None:
    """(path, label) per sample of a set read from image files: `samples` (ImageFolder, vitlab's file lists),
    or torchvision's file lists (Flowers-102, DTD: `_image_files`; Oxford Pets: `_images`) with `_labels`."""
    if isinstance(getattr(base, "samples", None), list):
        return base.samples
    for attr in ("_image_files", "_images"):
        files, labels = getattr(base, attr, None), getattr(base, "_labels", None)
        if isinstance(files, list) and isinstance(labels, list) and len(files) == len(labels):
            return list(zip(files, labels, strict=True))
    return None


def _file_samples(samples: list[tuple[Any, int]], indices: list[int]) -> Iterator[Sample]:
    for i in indices:
        path, label = samples[i]
        data = Path(path).read_bytes()
        ext = Path(path).suffix.lower().lstrip(".") or "img"
        yield data, ext, int(label), header_size(data)


def _array_samples(base: Any, indices: list[int]) -> Iterator[Sample]:
    """Sets that make a PIL image in `__getitem__` (torchvision arrays, FakeData): that image, untransformed."""
    transform, target_transform = getattr(base, "transform", None), getattr(base, "target_transform", None)
    base.transform = base.target_transform = None
    try:
        for i in indices:
            image, label = base[i]
            if not isinstance(image, Image.Image):
                raise TypeError(f"{type(base).__name__} returned {type(image).__name__}, not a PIL image")
            yield png_bytes(image), "png", int(label), image.size
    finally:
        base.transform, base.target_transform = transform, target_transform


def digit_samples(images: np.ndarray, labels: np.ndarray) -> Iterator[Sample]:
    """8x8 digits with values 0..16 (scikit-learn's `load_digits().images`) as grayscale PNGs of those values."""
    for image, label in zip(images, labels, strict=True):
        pixels = Image.fromarray(np.asarray(image, dtype=np.uint8), mode="L")
        yield png_bytes(pixels), "png", int(label), pixels.size


def split_samples(dataset: Dataset) -> Iterator[Sample]:
    """Every sample of one split, in the order the split reads it."""
    base, indices = unwrap(dataset)
    files = _image_files(base)
    if files is not None:
        yield from _file_samples(files, indices)
    else:
        yield from _array_samples(base, indices)
