"""Unreadable images in a folder data set: stop the run naming the file, or skip and count them.

A corrupt or truncated file is found when it is read, in whichever epoch and worker that happens; checking
every file at setup would cost minutes on an ImageNet-size folder. `data.skip_corrupt=true` replaces an
unreadable image by the next readable one of the split (logged, and counted in `results.json` as
`data/skipped_corrupt`), so one bad file among a million does not end a week-long run.
"""

from __future__ import annotations

import logging
import multiprocessing
from pathlib import Path
from typing import Any

from PIL import UnidentifiedImageError
from torch.utils.data import Dataset, Subset
from torchvision.datasets import ImageFolder
from torchvision.datasets.folder import default_loader

from vitlab.errors import ConfigError

log = logging.getLogger("vitlab")
UNREADABLE = (OSError, UnidentifiedImageError, ValueError, SyntaxError)  # what PIL raises for broken files


def read_image(path: str | Path) -> Any:
    """An RGB PIL image; an unreadable file stops the run with one paragraph naming it."""
    try:
        return default_loader(str(path))
    except UNREADABLE as exc:
        raise ConfigError(
            f"data: {path} is not a readable image ({type(exc).__name__}: {exc}). Remove or replace it."
        ) from exc


class CheckedImageFolder(ImageFolder):
    """`ImageFolder` whose unreadable files give one paragraph naming the file (or are skipped and counted)."""

    def __init__(self, root: str, transform: Any = None, skip_corrupt: bool = False) -> None:
        super().__init__(root, transform=transform)
        self.skip_corrupt = skip_corrupt
        # this data set's count, in shared memory: DataLoader workers add to the number the training process
        # reads. Forked workers inherit it; spawned ones receive it with the data set, which a lock made in a
        # fork context refuses, so the lock is made in a spawn context (it serves forked workers alike)
        self.skipped = multiprocessing.get_context("spawn").Value("i", 0)

    def __getitem__(self, index: int) -> tuple[Any, int]:
        for attempt in range(len(self.samples)):
            path, target = self.samples[(index + attempt) % len(self.samples)]
            try:
                sample = self.loader(path)
            except UNREADABLE as exc:
                if not self.skip_corrupt:
                    raise ConfigError(
                        f"data: {path} is not a readable image ({type(exc).__name__}: {exc}). Remove or replace it, "
                        "or set data.skip_corrupt=true to skip unreadable images (each is logged and counted)."
                    ) from exc
                with self.skipped.get_lock():
                    self.skipped.value += 1
                log.warning("data.skip_corrupt: skipped %s (%s)", path, exc)
                continue
            return (self.transform(sample) if self.transform is not None else sample), target
        raise ConfigError(f"data: no file of {self.root} is a readable image.")


def skipped_files(*datasets: Dataset | None) -> int:
    """Unreadable files skipped so far by the `CheckedImageFolder`s behind `datasets` (also inside a `Subset`)."""
    folders = {}
    for dataset in datasets:
        while isinstance(dataset, Subset):
            dataset = dataset.dataset
        if isinstance(dataset, CheckedImageFolder):
            folders[id(dataset)] = dataset  # one folder behind two splits counts once
    return sum(folder.skipped.value for folder in folders.values())
