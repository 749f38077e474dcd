"""torchvision's FakeData: random images with random labels, for tests and throughput checks."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from torch.utils.data import Dataset
from torchvision.datasets import FakeData

from vitlab.data.base import ImageDataModule
from vitlab.data.transforms import build_transform


class FakeDataModule(ImageDataModule):
    """Random images; each split draws from its own offset so the splits differ. Nothing to learn.

    `augment` (as for the torchvision data sets: `none`, or a mapping of `hflip`, `scale`, `randaugment`,
    `color_jitter`, `random_erasing`) runs timm's training transform on the training split, so the
    augmentation path can be exercised without a download.
    """

    def __init__(
        self,
        batch_size: int = 16,
        num_workers: int = 0,
        img_size: int = 32,
        pin_memory: bool = False,
        prefetch_factor: int = 2,
        num_classes: int = 10,
        train_size: int = 64,
        val_size: int = 32,
        test_size: int = 32,
        augment: Mapping[str, Any] | str = "none",
    ):
        super().__init__(batch_size, num_workers, img_size, pin_memory, prefetch_factor)
        self._num_classes = num_classes
        self.sizes = (train_size, val_size, test_size)
        self.augment = augment
        build_transform(img_size, True, (0.5,) * 3, (0.5,) * 3, augment)  # bad keys fail here, before training

    @property
    def num_classes(self) -> int:
        return self._num_classes

    def _build(self) -> tuple[Dataset, Dataset, Dataset]:
        eval_tf = build_transform(self.img_size, False, (0.5,) * 3, (0.5,) * 3)
        train_tf = build_transform(self.img_size, True, (0.5,) * 3, (0.5,) * 3, self.augment)
        shape = (3, self.img_size, self.img_size)
        return tuple(  # type: ignore[return-value]
            FakeData(size, shape, self._num_classes, transform=train_tf if i == 0 else eval_tf, random_offset=i * 10**6)
            for i, size in enumerate(self.sizes)
        )
