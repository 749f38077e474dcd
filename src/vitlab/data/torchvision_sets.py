"""Standard torchvision data sets (CIFAR, SVHN, Flowers102, Pets, DTD, STL-10) behind one data module."""

from __future__ import annotations

import socket
import urllib.error
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from torch.utils.data import Dataset, Subset
from torchvision import datasets

from vitlab.data.base import ImageDataModule
from vitlab.data.splits import hold_out_val
from vitlab.data.transforms import build_transform
from vitlab.errors import ConfigError

IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)


@dataclass(frozen=True)
class TorchvisionSpec:
    """How to build one torchvision data set: class, split keyword arguments, class count, sub-folder."""

    cls: Callable[..., Dataset]
    train: dict[str, Any]
    test: dict[str, Any]
    num_classes: int
    folder: str  # where torchvision puts it under `root`, for the error message
    val: dict[str, Any] | None = None  # an official validation split, if the data set has one
    extra: dict[str, Any] | None = None


SPECS: dict[str, TorchvisionSpec] = {
    "cifar10": TorchvisionSpec(datasets.CIFAR10, {"train": True}, {"train": False}, 10, "cifar-10-batches-py"),
    "cifar100": TorchvisionSpec(datasets.CIFAR100, {"train": True}, {"train": False}, 100, "cifar-100-python"),
    "svhn": TorchvisionSpec(datasets.SVHN, {"split": "train"}, {"split": "test"}, 10, "train_32x32.mat"),
    "flowers102": TorchvisionSpec(
        datasets.Flowers102, {"split": "train"}, {"split": "test"}, 102, "flowers-102", val={"split": "val"}
    ),
    "oxford_pets": TorchvisionSpec(
        datasets.OxfordIIITPet,
        {"split": "trainval"},
        {"split": "test"},
        37,
        "oxford-iiit-pet",
        extra={"target_types": "category"},
    ),
    "dtd": TorchvisionSpec(datasets.DTD, {"split": "train"}, {"split": "test"}, 47, "dtd", val={"split": "val"}),
    "stl10": TorchvisionSpec(datasets.STL10, {"split": "train"}, {"split": "test"}, 10, "stl10_binary"),
}


def download_urls(cls: type) -> list[str]:
    """The URLs a torchvision data set class downloads from (read from its class attributes), for messages."""
    found: list[str] = []

    def collect(value: Any) -> None:
        if isinstance(value, str) and value.startswith(("http://", "https://")) and value not in found:
            found.append(value)
        elif isinstance(value, (dict, list, tuple)):
            for item in value.values() if isinstance(value, dict) else value:
                collect(item)

    for name, value in vars(cls).items():
        if not name.startswith("__"):
            collect(value)
    return found


def no_download_error(name: str, spec: TorchvisionSpec, root: Path, exc: BaseException) -> ConfigError:
    """The paragraph for a download that could not reach its server: which URL, why, and the way out."""
    if isinstance(exc, urllib.error.HTTPError):
        why = f"the server answered HTTP {exc.code} {exc.reason}"
    else:
        reason = exc.reason if isinstance(exc, urllib.error.URLError) else exc
        why = f"no network connection from this machine ({reason or type(reason).__name__})"
    urls = " ".join(download_urls(spec.cls)) or f"torchvision's {spec.cls.__name__} URL"
    return ConfigError(
        f"data={name} data.download=true could not reach {urls}: {why}. Download it where there is a network "
        f"(`vitlab-train data={name} data.download=true paths.data_dir=<dir>` fetches it and trains; or fetch the "
        f"URL by hand), copy the folder that holds {spec.folder} to this machine, and point paths.data_dir (or "
        f"data.root, now {root}) at it; then run without data.download."
    )


def labels_of(dataset: Dataset) -> np.ndarray:
    """Labels without decoding images (torchvision keeps them as `targets`, `labels` or `_labels`)."""
    for attr in ("targets", "labels", "_labels"):
        if hasattr(dataset, attr):
            return np.asarray(getattr(dataset, attr))
    return np.asarray([dataset[i][1] for i in range(len(dataset))])  # type: ignore[arg-type]


class TorchvisionDataModule(ImageDataModule):
    """One of `SPECS`, stored under `root` (`paths.data_dir`); downloads only with `download=true`.

    Data sets without an official validation split hold out `val_fraction` of the training set
    (stratified, `split_seed`).
    """

    def __init__(
        self,
        name: str,
        root: str,
        download: bool = False,
        batch_size: int = 128,
        num_workers: int = 4,
        img_size: int = 32,
        pin_memory: bool = True,
        prefetch_factor: int = 2,
        val_fraction: float = 0.1,
        split_seed: int = 0,
        mean: Sequence[float] = IMAGENET_MEAN,
        std: Sequence[float] = IMAGENET_STD,
        augment: Mapping[str, Any] | None = None,
        crop_pct: float = 1.0,
    ):
        super().__init__(batch_size, num_workers, img_size, pin_memory, prefetch_factor)
        if name not in SPECS:
            raise ConfigError(f"data.name={name!r} is not a data set vitlab knows; allowed: {sorted(SPECS)}.")
        self.name, self.spec, self.root, self.download = name, SPECS[name], Path(root), download
        self.val_fraction, self.split_seed = val_fraction, split_seed
        self.train_tf = build_transform(img_size, True, mean, std, augment)
        self.eval_tf = build_transform(img_size, False, mean, std, crop_pct=crop_pct)

    @property
    def num_classes(self) -> int:
        return self.spec.num_classes

    def fingerprint_settings(self) -> dict[str, Any]:
        """The name and split, and for a set stored as single files beside others in `root` (SVHN's .mat
        files) each file's size: the folder listing covers the sets that have a folder of their own."""
        files = {}
        for dataset in (self.train_set, self.val_set, self.test_set):
            while isinstance(dataset, Subset):
                dataset = dataset.dataset
            name = getattr(dataset, "filename", None)
            if isinstance(name, str) and (self.root / name).is_file():
                files[name] = (self.root / name).stat().st_size
        return {"name": self.name, "val_fraction": self.val_fraction, "split_seed": self.split_seed, "files": files}

    def fingerprint_folder(self) -> tuple[Path | None, bool]:
        folder = self.root / self.spec.folder
        return (folder, True) if folder.is_dir() else (None, False)

    def _make(self, split: dict[str, Any], transform: Callable, download: bool = False) -> Dataset:
        try:
            extra = self.spec.extra or {}
            return self.spec.cls(str(self.root), **split, **extra, transform=transform, download=download)
        except (TimeoutError, urllib.error.URLError, ConnectionError, socket.gaierror) as exc:
            if not download:  # reading files only: not a network question
                raise
            raise no_download_error(self.name, self.spec, self.root, exc) from exc
        except RuntimeError as exc:  # torchvision: "Dataset not found or corrupted. You can use download=True ..."
            raise ConfigError(
                f"data={self.name}: no usable copy under paths.data_dir={self.root} (expected "
                f"{self.root / self.spec.folder}; torchvision says: {str(exc).strip()}). Either download it "
                f"once with `data.download=true` (needs network), or point `paths.data_dir` at the folder that "
                "holds it."
            ) from exc

    def prepare_data(self) -> None:
        if self.download:
            for split in (self.spec.train, self.spec.test, self.spec.val):
                if split is not None:
                    self._make(split, transform=None, download=True)  # type: ignore[arg-type]

    def _build(self) -> tuple[Dataset, Dataset, Dataset]:
        test = self._make(self.spec.test, self.eval_tf)
        if self.spec.val is not None:
            return self._make(self.spec.train, self.train_tf), self._make(self.spec.val, self.eval_tf), test
        train = self._make(self.spec.train, self.train_tf)
        train_eval = self._make(self.spec.train, self.eval_tf)
        return (*hold_out_val(train, train_eval, labels_of(train), self.val_fraction, self.split_seed), test)
