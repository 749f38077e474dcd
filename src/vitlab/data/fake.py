"""torchvision's FakeData: random images with random labels, for tests and throughput checks."""

from __future__ import annotations

from torch.utils.data import Dataset
from torchvision.datasets import FakeData

from vitlab.data.base import ImageDataModule
from vitlab.data.transforms import build_transform


class FakeDataModule(ImageDataModule):
    """Random images; each split draws from its own offset so the splits differ. Nothing to learn."""

    def __init__(
        self,
        batch_size: int = 16,
        num_workers: int = 0,
        img_size: int = 32,
        pin_memory: bool = False,
        num_classes: int = 10,
        train_size: int = 64,
        val_size: int = 32,
        test_size: int = 32,
    ):
        super().__init__(batch_size, num_workers, img_size, pin_memory)
        self._num_classes = num_classes
        self.sizes = (train_size, val_size, test_size)

    @property
    def num_classes(self) -> int:
        return self._num_classes

    def _build(self) -> tuple[Dataset, Dataset, Dataset]:
        tf = build_transform(self.img_size, False, (0.5,) * 3, (0.5,) * 3)
        return tuple(  # type: ignore[return-value]
            FakeData(size, (3, self.img_size, self.img_size), self._num_classes, transform=tf, random_offset=i * 10**6)
            for i, size in enumerate(self.sizes)
        )
