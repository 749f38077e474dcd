"""`ImageDataModule`: what every vitlab data module shares (global batch size, loaders, idempotent setup)."""

from __future__ import annotations

import abc
from pathlib import Path
from typing import Any

import pytorch_lightning as pl
from torch.utils.data import DataLoader, Dataset

from vitlab.data.sampling import EpochSampler, ResumableLoader, SeededSamples
from vitlab.errors import ConfigError


class ImageDataModule(pl.LightningDataModule, abc.ABC):
    """Base class: subclasses implement `num_classes` and `_build()` returning (train, val, test) sets.

    Args:
        batch_size: the *global* batch size; each of the `world_size` processes loads `batch_size / world_size`.
        num_workers: DataLoader worker processes per training process.
        img_size: side length of the square images the model receives.
        pin_memory: page-lock the batches for faster copies to a CUDA device; applied only when the trainer
            trains on CUDA (elsewhere pinning does nothing useful and torch warns).
        prefetch_factor: batches each worker prepares ahead (with `num_workers` > 0).
    """

    def __init__(
        self,
        batch_size: int = 64,
        num_workers: int = 0,
        img_size: int = 32,
        pin_memory: bool = False,
        prefetch_factor: int = 2,
    ):
        super().__init__()
        if batch_size < 1:
            raise ConfigError(f"data.batch_size={batch_size} must be a positive integer.")
        if isinstance(prefetch_factor, bool) or not isinstance(prefetch_factor, int) or prefetch_factor < 1:
            raise ConfigError(
                f"data.prefetch_factor={prefetch_factor!r}: the batches each loader worker prepares ahead must be a "
                "positive integer (2 is torch's default and vitlab's; it applies when data.num_workers > 0)."
            )
        if num_workers == 0 and prefetch_factor != 2:  # a key that is set takes effect or is refused
            raise ConfigError(
                f"data.prefetch_factor={prefetch_factor} has no effect with data.num_workers=0 (the main process "
                "loads each batch when it is needed); set data.num_workers to 1 or more, or leave prefetch_factor at 2."
            )
        self.batch_size, self.num_workers = batch_size, num_workers
        self.img_size, self.pin_memory, self.prefetch_factor = img_size, pin_memory, prefetch_factor
        # workers live across epochs: a new epoch does not pay their start-up again (docs/performance.md)
        self.persistent_workers = True
        self.train_set: Dataset | None = None
        self.val_set: Dataset | None = None
        self.test_set: Dataset | None = None
        self.seed = 0  # the run's seed (set by the CLI): the training order and sample seeds derive from it
        self.batch_split = 1  # micro-batches per batch of the run (set by the CLI after an out-of-memory retry)
        self._fingerprint: dict[str, Any] | None = None

    @property
    @abc.abstractmethod
    def num_classes(self) -> int:
        """Number of classes, derived from the data (never typed in two places)."""

    @abc.abstractmethod
    def _build(self) -> tuple[Dataset, Dataset, Dataset]:
        """Create the train, validation and test datasets (raise `ConfigError` if the data are missing)."""

    def setup(self, stage: str | None = None) -> None:
        if self.train_set is None:
            self.train_set, self.val_set, self.test_set = self._build()

    @property
    def _world(self) -> tuple[int, int]:
        """(world size, global rank): (1, 0) outside a trainer."""
        return (self.trainer.world_size, self.trainer.global_rank) if self.trainer is not None else (1, 0)

    @property
    def per_device_batch_size(self) -> int:
        world = self.trainer.world_size if self.trainer is not None else 1
        if self.batch_size % world:
            raise ConfigError(
                f"data.batch_size={self.batch_size} is the global batch size and must be divisible by the "
                f"number of processes ({world})."
            )
        return self.batch_size // world

    def _loader(self, dataset: Dataset | None, train: bool) -> DataLoader:
        """Evaluation: a plain loader in order. Training: an `EpochSampler` (the order is a function of
        (seed, epoch), each rank takes its slice of every global batch, full batches only, so Mixup gets an
        even batch) feeding a `ResumableLoader`, whose position is saved in checkpoints (docs/resume.md)."""
        assert dataset is not None, "setup() builds the datasets before any loader is made"
        batch = self.per_device_batch_size
        kwargs: dict[str, Any] = dict(batch_size=batch, num_workers=self.num_workers, pin_memory=self._pin())
        if self.num_workers > 0:  # torch refuses both without workers
            kwargs |= dict(persistent_workers=self.persistent_workers, prefetch_factor=self.prefetch_factor)
        if not train:
            return DataLoader(dataset, shuffle=False, **kwargs)
        world, rank = self._world
        sampler = EpochSampler(dataset, batch, num_replicas=world, rank=rank, seed=self.seed, split=self.batch_split)
        return ResumableLoader(SeededSamples(dataset), sampler=sampler, **kwargs)

    def _pin(self) -> bool:
        """`pin_memory` where it helps: the batches go to a CUDA device (the trainer's accelerator; outside a
        trainer, whether CUDA is available). On the CPU pinning only costs a copy, and torch warns."""
        if not self.pin_memory:
            return False
        if self.trainer is not None:
            from pytorch_lightning.accelerators import CUDAAccelerator

            return isinstance(self.trainer.accelerator, CUDAAccelerator)
        import torch

        return torch.cuda.is_available()

    def train_batches_per_epoch(self) -> int:
        """Training batches per epoch and process (what the training loader yields), without building it."""
        self.setup()
        world, rank = self._world
        sampler = EpochSampler(self.train_set, self.per_device_batch_size, world, rank, split=self.batch_split)  # type: ignore[arg-type]
        return sampler.steps

    def train_dataloader(self) -> DataLoader:
        self.setup()
        return self._loader(self.train_set, train=True)

    def val_dataloader(self) -> DataLoader:
        self.setup()
        return self._loader(self.val_set, train=False)

    def test_dataloader(self) -> DataLoader:
        self.setup()
        return self._loader(self.test_set, train=False)

    def fingerprint(self) -> dict[str, Any]:
        """Which data this module reads: {"sha256", "samples", "basis"} over every split's samples, computed
        once (after setup) and cached beside folder data (vitlab.data.fingerprint; docs/runs.md)."""
        from vitlab.data.fingerprint import fingerprint

        self.setup()
        if self._fingerprint is None:
            splits = {"train": self.train_set, "val": self.val_set, "test": self.test_set}
            settings = {"data": type(self).__name__, "num_classes": self.num_classes, **self.fingerprint_settings()}
            folder, listed = self.fingerprint_folder()
            self._fingerprint = fingerprint(splits, settings, folder, listed)  # type: ignore[arg-type]
        return dict(self._fingerprint)

    def fingerprint_settings(self) -> dict[str, Any]:
        """The settings that select samples (class names, selected classes, split files): part of the hash."""
        return {}

    def fingerprint_folder(self) -> tuple[Path | None, bool]:
        """(the folder the samples' paths are relative to and the cache lives in, or None for in-memory data;
        whether every file under it is hashed too, for sets whose samples are not files)."""
        return None, False

    def split_sizes(self) -> dict[str, int]:
        self.setup()
        sets = {"train": self.train_set, "val": self.val_set, "test": self.test_set}
        return {name: len(ds) for name, ds in sets.items()}  # type: ignore[arg-type]
