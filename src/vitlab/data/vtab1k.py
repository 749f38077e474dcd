"""VTAB-1k (19 tasks, 1,000 training images each) in the standard processed layout of the NOAH/FacT code:

    <root>/<task>/train800.txt, val200.txt, train800val200.txt, test.txt    lines: `<image path> <label>`
    <root>/<task>/images/...                                                paths relative to <root>/<task>/

Protocols (docs/papers/ode.md#vtab-1k-protocol):
    tune   train800 -> validate on val200; the test split is val200 too, so tuning never touches test.txt.
    final  train800val200 -> test on test.txt. val200 is inside the training set, so, as in FacT (which
           evaluates on test during training), validation is test.txt: `val/acc` is then a test metric and
           must not select checkpoints or hyper-parameters (use `test_checkpoint=last`; tune with `tune`).
           `final_val=val200` validates on the (seen) val200 instead: a cheap training curve, not a score.

Preprocessing as FacT/NOAH: square bicubic resize to `img_size`, no augmentation, RGB, normalised with `mean` and
`std` as every image data set: ImageNet's (FacT, NOAH, the default), 0.5 and 0.5 (Inception), or 0 and 1 (none:
VPT, SSF feed [0, 1] pixels; see docs/papers/ode.md). `NORMALISATIONS` names the three.
Never downloaded; check a prepared folder with `python scripts/check_vtab.py <root>`.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

from timm.data import create_transform
from torch.utils.data import Dataset

from vitlab.config_names import deprecated
from vitlab.data.base import ImageDataModule
from vitlab.data.tiny_imagenet import LabelledFiles
from vitlab.data.torchvision_sets import IMAGENET_MEAN, IMAGENET_STD
from vitlab.data.transforms import build_transform
from vitlab.data.vtab_tasks import LAYOUT, LIST_FILES, NUM_CLASSES, TASKS, describe_tasks, read_list
from vitlab.errors import ConfigError

log = logging.getLogger(__name__)

# (mean, std) of the three conventions of the PEFT literature; `data.normalize=<name>` is their old spelling
NORMALISATIONS: dict[str, tuple[tuple[float, ...], tuple[float, ...]]] = {
    "imagenet": (IMAGENET_MEAN, IMAGENET_STD),
    "inception": ((0.5, 0.5, 0.5), (0.5, 0.5, 0.5)),
    "none": ((0.0, 0.0, 0.0), (1.0, 1.0, 1.0)),
}
# (train, val, test) list files per protocol; `final` validation is chosen by `final_val`
PROTOCOLS: dict[str, tuple[str, str, str]] = {
    "tune": ("train800.txt", "val200.txt", "val200.txt"),
    "final": ("train800val200.txt", "test.txt", "test.txt"),
}
FINAL_VAL = {"test": "test.txt", "val200": "val200.txt"}
PREPARE = (
    "VTAB-1k is never downloaded by vitlab: prepare the standard processed VTAB-1k layout of the NOAH/FacT "
    f"repositories ({LAYOUT}) under paths.data_dir/vtab-1k or point data.root at it, then check it with "
    "`python scripts/check_vtab.py <root>`"
)


def square_resize_transform(img_size: int, mean: Sequence[float], std: Sequence[float]) -> Callable:
    """Resize to (img_size, img_size) with bicubic interpolation (aspect ratio not kept, no crop), to tensor,
    normalise: FacT's `Resize((224, 224), interpolation=3)`, through timm's `squash` evaluation transform."""
    return create_transform(
        input_size=img_size,
        is_training=False,
        mean=tuple(mean),
        std=tuple(std),
        crop_pct=1.0,
        crop_mode="squash",
        interpolation="bicubic",
    )


def _check_choice(key: str, value: str, allowed: Sequence[str], what: str) -> None:
    if value not in allowed:
        raise ConfigError(f"data.{key}={value!r} is not {what}; allowed: {', '.join(map(repr, allowed))}.")


def _normalisation(
    mean: Sequence[float], std: Sequence[float], normalize: str | None
) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """(mean, std); the deprecated `normalize` preset, when given, stands for them (one deprecation line)."""
    mean, std = tuple(float(m) for m in mean), tuple(float(s) for s in std)
    if normalize is None:
        return mean, std
    _check_choice("normalize", normalize, list(NORMALISATIONS), "a normalisation")
    preset = NORMALISATIONS[normalize]
    new = f"data.mean={list(preset[0])} data.std={list(preset[1])}"
    deprecated(f"data.normalize={normalize}", new)
    if (mean, std) not in (preset, (IMAGENET_MEAN, IMAGENET_STD)):
        raise ConfigError(
            f"data.normalize={normalize} (the old spelling of {new}) and data.mean={list(mean)} "
            f"data.std={list(std)} are one setting with two values; give only data.mean and data.std."
        )
    return preset


class VTAB1kDataModule(ImageDataModule):
    """One VTAB-1k task; `num_classes` is max label + 1 over its four list files.

    Args:
        root: the folder holding one sub-folder per task (`paths.data_dir/vtab-1k`).
        task: one of the 19 folder names (`vitlab.data.vtab_tasks.TASKS`).
        protocol: `tune` (train800 -> val200) or `final` (train800val200 -> test.txt); see the module docs.
        mean, std: per-channel normalisation (ImageNet's by default; `NORMALISATIONS` has the other conventions).
        normalize: deprecated (goes in the next release): `imagenet`, `inception` or `none`, applied as `mean`
            and `std` with one deprecation line; refused when `mean`/`std` are also set to other values.
        augment: `none` (the protocol) or a mapping of `data.augment` options (timm training transform).
        final_val: validation split of the `final` protocol: `test` (FacT) or `val200` (seen in training).
    """

    def __init__(
        self,
        root: str,
        task: str = "cifar",
        protocol: str = "tune",
        batch_size: int = 64,
        num_workers: int = 4,
        img_size: int = 224,
        pin_memory: bool = True,
        prefetch_factor: int = 2,
        mean: Sequence[float] = IMAGENET_MEAN,
        std: Sequence[float] = IMAGENET_STD,
        normalize: str | None = None,
        augment: Mapping[str, Any] | str | None = "none",
        final_val: str = "test",
    ) -> None:
        super().__init__(batch_size, num_workers, img_size, pin_memory, prefetch_factor)
        if task not in TASKS:
            raise ConfigError(
                f"data.task={task!r} is not a VTAB-1k task; allowed (the folder names of the standard processed "
                f"layout): {describe_tasks()}."
            )
        protocols = "a VTAB-1k protocol (tune: train800 -> val200; final: train800val200 -> test.txt)"
        _check_choice("protocol", protocol, list(PROTOCOLS), protocols)
        mean, std = _normalisation(mean, std, normalize)
        _check_choice("final_val", final_val, list(FINAL_VAL), "a validation split of the final protocol")
        self.root, self.task, self.protocol, self.final_val = Path(root), task, protocol, final_val
        self.task_dir = self.root / task
        if not self.root.is_dir():
            raise ConfigError(f"data.root={self.root} does not exist. {PREPARE}.")
        if not self.task_dir.is_dir():
            raise ConfigError(f"data.root={self.root} has no folder '{task}' (data.task={task}). {PREPARE}.")
        self.lists = {name: self._read(name) for name in LIST_FILES}
        labels = [label for entries in self.lists.values() for _, label in entries]
        if not labels:
            raise ConfigError(f"data.root={self.root}: the list files of '{task}' are empty. {PREPARE}.")
        self._num_classes = max(labels) + 1
        self._check_class_count()
        self.eval_tf = square_resize_transform(img_size, mean, std)
        no_augment = augment is None or augment == "none"
        self.train_tf = self.eval_tf if no_augment else build_transform(img_size, True, mean, std, augment)

    @property
    def num_classes(self) -> int:
        return self._num_classes

    def split_files(self) -> tuple[str, str, str]:
        """The (train, val, test) list files this protocol reads."""
        train, val, test = PROTOCOLS[self.protocol]
        return train, FINAL_VAL[self.final_val] if self.protocol == "final" else val, test

    def fingerprint_settings(self) -> dict[str, Any]:
        return {"task": self.task, "protocol": self.protocol, "split_files": list(self.split_files())}

    def fingerprint_folder(self) -> tuple[Path | None, bool]:
        return self.task_dir, False

    def _read(self, name: str) -> list[tuple[str, int]]:
        path = self.task_dir / name
        if not path.is_file():
            raise ConfigError(
                f"data.root={self.root}: {self.task}/{name} is missing; every task folder needs "
                f"{', '.join(LIST_FILES)}. {PREPARE}."
            )
        try:
            return read_list(path)
        except ConfigError as exc:
            raise ConfigError(f"data.root={self.root} (data.task={self.task}): {exc}") from None

    def _check_class_count(self) -> None:
        """Labels above the known class count mean a wrong or corrupt folder; fewer classes are allowed (a
        miniature copy) but reported."""
        known = NUM_CLASSES[self.task]
        if self._num_classes > known:
            raise ConfigError(
                f"data.root={self.root}: '{self.task}' has labels up to {self._num_classes - 1}, but the task has "
                f"{known} classes (labels 0..{known - 1}). Is data.task the right folder? Check it with "
                f"`python scripts/check_vtab.py {self.root} --tasks {self.task}`."
            )
        if self._num_classes < known:
            log.warning(
                "VTAB-1k %s: labels cover %d classes, the task has %d (a miniature or incomplete copy?); "
                "the head gets %d outputs",
                self.task,
                self._num_classes,
                known,
                self._num_classes,
            )

    def _samples(self, name: str) -> list[tuple[Path, int]]:
        samples = [(self.task_dir / rel, label) for rel, label in self.lists[name]]
        missing = [str(path) for path, _ in samples if not path.is_file()]
        if missing:
            raise ConfigError(
                f"data.root={self.root}: {len(missing)} images listed in {self.task}/{name} are missing "
                f"(first: {missing[0]}). Re-extract the task, and check it with "
                f"`python scripts/check_vtab.py {self.root} --tasks {self.task}`."
            )
        return samples

    def _build(self) -> tuple[Dataset, Dataset, Dataset]:
        train, val, test = self.split_files()
        if self.protocol == "tune":
            log.info("VTAB-1k %s, protocol tune: train800 -> val200; the test split is val200 too", self.task)
        elif self.final_val == "test":
            log.info(
                "VTAB-1k %s, protocol final: train800val200 -> test.txt; validation is test.txt as in FacT, so "
                "val/acc is a test metric: do not select checkpoints or hyper-parameters on it",
                self.task,
            )
        else:
            log.info("VTAB-1k %s, protocol final: validation on val200, which is part of the training set", self.task)
        return (
            LabelledFiles(self._samples(train), self.train_tf),
            LabelledFiles(self._samples(val), self.eval_tf),
            LabelledFiles(self._samples(test), self.eval_tf),
        )
