"""Any image classification data set laid out as class folders: `<root>/{train,val,test}/<class>/<image>`."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from torch.utils.data import Dataset
from torchvision.datasets import ImageFolder

from vitlab.data.base import ImageDataModule
from vitlab.data.corrupt import CheckedImageFolder
from vitlab.data.splits import hold_out_val
from vitlab.data.torchvision_sets import IMAGENET_MEAN, IMAGENET_STD
from vitlab.data.transforms import build_transform
from vitlab.errors import ConfigError

LAYOUT = (
    "<root>/train/<class>/<image>, <root>/test/<class>/<image> and optionally <root>/val/<class>/<image> "
    "(without val/, `data.val_fraction` of train is held out)"
)


class ImageFolderDataModule(ImageDataModule):
    """Train/val/test class folders; class names and count come from `train/`."""

    def __init__(
        self,
        root: str,
        batch_size: int = 64,
        num_workers: int = 4,
        img_size: int = 224,
        pin_memory: bool = True,
        prefetch_factor: int = 2,
        val_fraction: float = 0.1,
        split_seed: int = 0,
        mean: Sequence[float] = IMAGENET_MEAN,
        std: Sequence[float] = IMAGENET_STD,
        augment: Mapping[str, Any] | None = None,
        crop_pct: float = 1.0,
        skip_corrupt: bool = False,
    ):
        super().__init__(batch_size, num_workers, img_size, pin_memory, prefetch_factor)
        self.root = Path(root)
        for split in ("train", "test"):
            if not (self.root / split).is_dir():
                raise ConfigError(f"data.root={self.root}: no '{split}' folder. Expected layout: {LAYOUT}.")
        self.classes = sorted(p.name for p in (self.root / "train").iterdir() if p.is_dir())
        if not self.classes:
            raise ConfigError(f"data.root={self.root}/train holds no class folders. Expected layout: {LAYOUT}.")
        self.val_fraction, self.split_seed = val_fraction, split_seed
        self.skip_corrupt = skip_corrupt
        self.train_tf = build_transform(img_size, True, mean, std, augment)
        self.eval_tf = build_transform(img_size, False, mean, std, crop_pct=crop_pct)

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    def fingerprint_settings(self) -> dict[str, Any]:
        return {"classes": self.classes, "val_fraction": self.val_fraction, "split_seed": self.split_seed}

    def fingerprint_folder(self) -> tuple[Path | None, bool]:
        return self.root, False

    def _folder(self, split: str, transform: Any) -> ImageFolder:
        present = sorted(p.name for p in (self.root / split).iterdir() if p.is_dir())
        missing, extra = sorted(set(self.classes) - set(present)), sorted(set(present) - set(self.classes))
        if missing or extra:
            problems = [
                f"lacks {missing[:5]}" if missing else "",
                f"has {extra[:5]} that train/ lacks" if extra else "",
            ]
            raise ConfigError(
                f"data.root={self.root}/{split} {' and '.join(p for p in problems if p)}; every split must have "
                "exactly the class folders of train/ (labels are numbered by them)."
            )
        try:
            return CheckedImageFolder(str(self.root / split), transform, self.skip_corrupt)
        except FileNotFoundError as exc:  # torchvision: a class folder without a single image file
            raise ConfigError(
                f"data.root={self.root}/{split}: {exc}. Remove the empty class folder (from every split) or add images."
            ) from exc

    def _build(self) -> tuple[Dataset, Dataset, Dataset]:
        test = self._folder("test", self.eval_tf)
        if (self.root / "val").is_dir():
            return self._folder("train", self.train_tf), self._folder("val", self.eval_tf), test
        train, train_eval = self._folder("train", self.train_tf), self._folder("train", self.eval_tf)
        return (*hold_out_val(train, train_eval, train.targets, self.val_fraction, self.split_seed), test)
