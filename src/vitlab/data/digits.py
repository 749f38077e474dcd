"""scikit-learn's bundled 8x8 handwritten digits, as 3-channel images of any size: no download, ever."""

from __future__ import annotations

from collections.abc import Callable
from typing import Literal

import torch
import torch.nn.functional as F
from sklearn.datasets import load_digits
from torch import Tensor
from torch.utils.data import Dataset
from torchvision.transforms import v2

from vitlab.data.base import ImageDataModule
from vitlab.data.splits import stratified_split
from vitlab.errors import ConfigError

Augment = Literal["none", "light"]


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


class DigitsDataModule(ImageDataModule):
    """Digits with a fixed-seed stratified split (default 70/10/20 %: 1257/180/360 images).

    Args:
        val_fraction, test_fraction: shares of all images held out for validation and test.
        split_seed: seed of the split; independent of the training seed so every run sees the same test set.
        augment: `light` adds small random rotations, shifts and scalings to training images; `none` disables.
    """

    def __init__(
        self,
        batch_size: int = 64,
        num_workers: int = 0,
        img_size: int = 32,
        pin_memory: bool = False,
        val_fraction: float = 0.1,
        test_fraction: float = 0.2,
        split_seed: int = 0,
        augment: Augment = "light",
    ):
        super().__init__(batch_size, num_workers, img_size, pin_memory)
        if augment not in ("none", "light"):
            raise ConfigError(f"data.augment={augment!r} is not an option for digits; allowed: 'none', 'light'.")
        if min(val_fraction, test_fraction) <= 0 or val_fraction + test_fraction >= 1:
            raise ConfigError(
                f"data.val_fraction={val_fraction} and data.test_fraction={test_fraction} must be positive and "
                "sum to less than 1."
            )
        self.fractions = (val_fraction, test_fraction)
        self.split_seed, self.augment = split_seed, augment

    @property
    def num_classes(self) -> int:
        return 10

    def split_indices(self) -> list[Tensor]:
        """(train, val, test) indices into the 1,797 digits; the same for every run with this `split_seed`."""
        labels = load_digits().target
        return [torch.as_tensor(p) for p in stratified_split(labels, self.fractions, seed=self.split_seed)]

    def _build(self) -> tuple[Dataset, Dataset, Dataset]:
        images, labels = digits_images(self.img_size)
        train_tf = None
        if self.augment == "light":
            train_tf = v2.RandomAffine(degrees=10, translate=(0.1, 0.1), scale=(0.9, 1.1), fill=-1.0)
        train, val, test = self.split_indices()
        return (
            TensorImageDataset(images[train], labels[train], train_tf),
            TensorImageDataset(images[val], labels[val]),
            TensorImageDataset(images[test], labels[test]),
        )
