"""scikit-learn's bundled 8x8 handwritten digits, as 3-channel images of any size: no download, ever."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from types import MappingProxyType
from typing import Any

import torch
import torch.nn.functional as F
from sklearn.datasets import load_digits
from torch import Tensor
from torch.utils.data import Dataset
from torchvision.transforms import v2

from vitlab.config_names import deprecated
from vitlab.data.base import ImageDataModule
from vitlab.data.splits import stratified_split
from vitlab.errors import ConfigError

# `data.augment` of digits: a random affine map of the 8x8 strokes (the images are tensors, not PIL images, so
# timm's transform and its keys do not apply); `none` (or null) trains on the images as they are.
DIGITS_AUGMENT: dict[str, Any] = {
    "rotate": 10.0,  # degrees, drawn from [-rotate, rotate]
    "translate": 0.1,  # largest shift, a fraction of the side, horizontally and vertically
    "zoom": (0.9, 1.1),  # scale factor range
}
_DEFAULT_AUGMENT = MappingProxyType(DIGITS_AUGMENT)


class TensorImageDataset(Dataset):
    """In-memory (N, C, H, W) images and labels, with an optional per-sample tensor transform."""

    def __init__(self, images: Tensor, labels: Tensor, transform: Callable[[Tensor], Tensor] | None = None):
        self.images, self.labels, self.transform = images, labels, transform

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, i: int) -> tuple[Tensor, int]:
        x = self.images[i]
        return (self.transform(x) if self.transform is not None else x), int(self.labels[i])


def digits_images(img_size: int) -> tuple[Tensor, Tensor]:
    """All 1,797 digits as (N, 3, img_size, img_size) floats normalised to [-1, 1], and their labels."""
    data = load_digits()
    x = torch.tensor(data.images, dtype=torch.float32).unsqueeze(1) / 16.0  # (N, 1, 8, 8) in [0, 1]
    if img_size != 8:
        x = F.interpolate(x, size=(img_size, img_size), mode="bilinear", align_corners=False)
    x = (x.clamp(0, 1) - 0.5) / 0.5
    return x.expand(-1, 3, -1, -1).contiguous(), torch.tensor(data.target, dtype=torch.long)


def digits_augment(augment: Mapping[str, Any] | str | None) -> dict[str, Any] | None:
    """The digits' augmentation options (`DIGITS_AUGMENT` completed by `augment`), or None for `none`/null."""
    if augment is None or augment == "none":
        return None
    if augment == "light":
        deprecated("data.augment=light", "data.augment={rotate: 10, translate: 0.1, zoom: [0.9, 1.1]} (the default)")
        return dict(DIGITS_AUGMENT)
    if not isinstance(augment, Mapping):
        raise ConfigError(f"data.augment={augment!r}: give a mapping of {sorted(DIGITS_AUGMENT)} or 'none' for digits.")
    unknown = sorted(set(augment) - set(DIGITS_AUGMENT))
    if unknown:
        raise ConfigError(f"data.augment has unknown keys {unknown} for digits; allowed: {sorted(DIGITS_AUGMENT)}.")
    opts = {**DIGITS_AUGMENT, **augment}
    zoom = opts["zoom"]
    if not (
        float(opts["rotate"]) >= 0
        and 0 <= float(opts["translate"]) <= 1
        and len(zoom) == 2
        and 0 < float(zoom[0]) <= float(zoom[1])
    ):
        raise ConfigError(
            f"data.augment={dict(opts)}: rotate must be >= 0 (degrees), translate in [0, 1] (a fraction of the "
            "side), zoom two scale factors 0 < low <= high."
        )
    return opts


class DigitsDataModule(ImageDataModule):
    """Digits with a fixed-seed stratified split (default 70/10/20 %: 1257/180/360 images).

    Args:
        val_fraction, test_fraction: shares of all images held out for validation and test.
        split_seed: seed of the split; independent of the training seed so every run sees the same test set.
        augment: a mapping of `rotate`, `translate`, `zoom` (`DIGITS_AUGMENT`, the default, fills what is not
            given): small random rotations, shifts and scalings of training images; `none` (or null): none.
            `light` is the old name of the default (one deprecation line).
        classes: keep only these digits (relabelled 0..K-1 in the given order), e.g. [0, 1, 2, 3, 4] to
            pre-train and [5, 6, 7, 8, 9] to transfer; null keeps all ten.
        train_per_class: keep only this many training images per class (a few-shot transfer set, drawn with
            `split_seed`); validation and test sets are unchanged; null keeps all.
    """

    def __init__(
        self,
        batch_size: int = 64,
        num_workers: int = 0,
        img_size: int = 32,
        pin_memory: bool = False,
        prefetch_factor: int = 2,
        val_fraction: float = 0.1,
        test_fraction: float = 0.2,
        split_seed: int = 0,
        augment: Mapping[str, Any] | str | None = _DEFAULT_AUGMENT,
        classes: list[int] | None = None,
        train_per_class: int | None = None,
    ):
        super().__init__(batch_size, num_workers, img_size, pin_memory, prefetch_factor)
        if min(val_fraction, test_fraction) <= 0 or val_fraction + test_fraction >= 1:
            raise ConfigError(
                f"data.val_fraction={val_fraction} and data.test_fraction={test_fraction} must be positive and "
                "sum to less than 1."
            )
        if classes is not None and (
            not classes or len(set(classes)) != len(classes) or not set(classes) <= set(range(10))
        ):
            raise ConfigError(f"data.classes={classes} must be distinct digits 0-9 (or null for all ten).")
        if train_per_class is not None and train_per_class < 1:
            raise ConfigError(f"data.train_per_class={train_per_class} must be a positive number (or null for all).")
        self.fractions = (val_fraction, test_fraction)
        self.split_seed, self.augment = split_seed, digits_augment(augment)
        self.classes = list(classes) if classes is not None else list(range(10))
        self.train_per_class = train_per_class

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    def fingerprint_settings(self) -> dict[str, Any]:
        return {"classes": self.classes, "train_per_class": self.train_per_class}

    def split_indices(self) -> list[Tensor]:
        """(train, val, test) indices into the 1,797 digits; the same for every run with this `split_seed`.
        The split is made over all ten digits first, so the test images of a digit never depend on `classes`."""
        labels = torch.as_tensor(load_digits().target)
        parts = [torch.as_tensor(p) for p in stratified_split(labels.numpy(), self.fractions, seed=self.split_seed)]
        keep = torch.as_tensor(self.classes)
        parts = [p[torch.isin(labels[p], keep)] for p in parts]
        if self.train_per_class is not None:
            parts[0] = self._few_shot(parts[0], labels)
        return parts

    def _few_shot(self, train: Tensor, labels: Tensor) -> Tensor:
        generator = torch.Generator().manual_seed(self.split_seed)
        picked = []
        for digit in self.classes:
            of_digit = train[labels[train] == digit]
            if len(of_digit) < self.train_per_class:
                raise ConfigError(
                    f"data.train_per_class={self.train_per_class}: digit {digit} has only {len(of_digit)} "
                    "training images; choose a smaller number."
                )
            picked.append(of_digit[torch.randperm(len(of_digit), generator=generator)[: self.train_per_class]])
        return torch.cat(picked).sort().values

    def _build(self) -> tuple[Dataset, Dataset, Dataset]:
        images, digits = digits_images(self.img_size)
        labels = torch.full_like(digits, -1)
        for new, digit in enumerate(self.classes):
            labels[digits == digit] = new  # relabel the kept digits 0..K-1
        train_tf = None
        if self.augment is not None:
            shift = float(self.augment["translate"])
            train_tf = v2.RandomAffine(
                degrees=float(self.augment["rotate"]),
                translate=(shift, shift),
                scale=tuple(float(z) for z in self.augment["zoom"]),
                fill=-1.0,
            )
        train, val, test = self.split_indices()
        return (
            TensorImageDataset(images[train], labels[train], train_tf),
            TensorImageDataset(images[val], labels[val]),
            TensorImageDataset(images[test], labels[test]),
        )
