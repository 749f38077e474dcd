"""Tiny ImageNet-200 in its distributed layout (cs231n.stanford.edu/tiny-imagenet-200.zip, unzipped):

    <root>/wnids.txt                              200 class ids; their order is the label order
    <root>/train/<wnid>/images/*.JPEG             500 per class
    <root>/val/images/*.JPEG + val/val_annotations.txt   10,000 labelled images: our test split

As in the ViX code, the official validation images are the test set; `val_fraction` of train is held out
(stratified) for model selection. Never downloaded: unzip the archive under `paths.data_dir`.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

from torch.utils.data import Dataset

from vitlab.data.base import ImageDataModule
from vitlab.data.corrupt import read_image
from vitlab.data.splits import hold_out_val
from vitlab.data.transforms import build_transform
from vitlab.errors import ConfigError

LAYOUT = "<root>/wnids.txt, <root>/train/<wnid>/images/*.JPEG, <root>/val/images/*.JPEG, <root>/val/val_annotations.txt"


class LabelledFiles(Dataset):
    """(image path, label) pairs read with PIL, RGB."""

    def __init__(self, samples: Sequence[tuple[Path, int]], transform: Callable) -> None:
        self.samples, self.transform = list(samples), transform
        self.targets = [label for _, label in self.samples]

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, index: int) -> tuple[Any, int]:
        path, label = self.samples[index]
        return self.transform(read_image(path)), label


class TinyImageNetDataModule(ImageDataModule):
    """200 classes, 64 px; train (minus a held-out val part), val = held out, test = official val."""

    def __init__(
        self,
        root: str,
        batch_size: int = 128,
        num_workers: int = 4,
        img_size: int = 64,
        pin_memory: bool = True,
        prefetch_factor: int = 2,
        val_fraction: float = 0.1,
        split_seed: int = 0,
        mean: Sequence[float] = (0.485, 0.456, 0.406),
        std: Sequence[float] = (0.229, 0.224, 0.225),
        augment: Mapping[str, Any] | str | None = None,
        crop_pct: float = 1.0,
    ) -> None:
        super().__init__(batch_size, num_workers, img_size, pin_memory, prefetch_factor)
        self.root = Path(root)
        missing = [
            p for p in ("wnids.txt", "train", "val/images", "val/val_annotations.txt") if not (self.root / p).exists()
        ]
        if missing:
            raise ConfigError(
                f"data.root={self.root} is not a Tiny ImageNet folder (missing {', '.join(missing)}). Expected "
                f"{LAYOUT}: download tiny-imagenet-200.zip and unzip it under paths.data_dir."
            )
        self.wnids = [line.strip() for line in (self.root / "wnids.txt").read_text().splitlines() if line.strip()]
        self.val_fraction, self.split_seed = val_fraction, split_seed
        self.train_tf = build_transform(img_size, True, mean, std, augment)
        self.eval_tf = build_transform(img_size, False, mean, std, crop_pct=crop_pct)

    @property
    def num_classes(self) -> int:
        return len(self.wnids)

    def fingerprint_settings(self) -> dict[str, Any]:
        return {"classes": self.wnids, "val_fraction": self.val_fraction, "split_seed": self.split_seed}

    def fingerprint_folder(self) -> tuple[Path | None, bool]:
        return self.root, False

    def _train_samples(self) -> list[tuple[Path, int]]:
        samples = []
        for label, wnid in enumerate(self.wnids):
            files = sorted((self.root / "train" / wnid / "images").glob("*.JPEG"))
            if not files:
                raise ConfigError(
                    f"data.root={self.root}: no training images in train/{wnid}/images. Expected {LAYOUT}."
                )
            samples += [(f, label) for f in files]
        return samples

    def _test_samples(self) -> list[tuple[Path, int]]:
        label_of = {wnid: i for i, wnid in enumerate(self.wnids)}
        samples = []
        for line in (self.root / "val" / "val_annotations.txt").read_text().splitlines():
            if not line.strip():
                continue
            name, wnid = line.split("\t")[:2]
            if wnid not in label_of:
                raise ConfigError(f"data.root={self.root}: val_annotations.txt names class {wnid}, not in wnids.txt.")
            samples.append((self.root / "val" / "images" / name, label_of[wnid]))
        return samples

    def _build(self) -> tuple[Dataset, Dataset, Dataset]:
        samples = self._train_samples()
        train, train_eval = LabelledFiles(samples, self.train_tf), LabelledFiles(samples, self.eval_tf)
        val_split = hold_out_val(train, train_eval, train.targets, self.val_fraction, self.split_seed)
        return (*val_split, LabelledFiles(self._test_samples(), self.eval_tf))
