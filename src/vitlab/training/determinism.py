"""Randomness of a training step as a function of where the step is, so a resumed run draws what the
uninterrupted run drew (docs/resume.md).

`StepSeeding` re-seeds Python's, NumPy's and torch's generators (CPU and every CUDA device) before every
training batch from (seed, epoch, batch index, rank). Dropout masks, Mixup/CutMix and anything else drawn
inside a step then depend on the step alone: no generator state has to travel in a checkpoint, and nothing
that ran before the step (validation, a data loader starting its workers, a checkpoint being written) can
shift the draws. It also hands the batch's *sample seeds* to the model, for the whole step
(`vitlab.models.seeded_drop_path`): drop-path masks depend on the image, not on the rank, so the same
experiment on 1 or N processes drops the same paths. Sample augmentation is seeded per image by
`vitlab.data.sampling`; Performer's feature redraws are seeded by (seed, step, layer) already.
"""

from __future__ import annotations

import random
from typing import Any

import numpy as np
import pytorch_lightning as pl
import torch

from vitlab.data.sampling import EpochSampler, mix_seed
from vitlab.models.seeded_drop_path import set_sample_seeds


def seed_all(seed: int) -> None:
    """Seed Python, NumPy and torch (CPU and all CUDA devices) from one 63-bit integer."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def training_sampler(trainer: pl.Trainer) -> EpochSampler | None:
    """The `EpochSampler` of the training loader, or None (Lightning's `overfit_batches` replaces it)."""
    sampler = getattr(trainer.train_dataloader, "sampler", None)
    return sampler if isinstance(sampler, EpochSampler) else None


def batch_size_of(batch: Any) -> int | None:
    """The number of samples in a training batch (its first tensor's length), or None if it has none."""
    first = batch[0] if isinstance(batch, (list, tuple)) and batch else batch
    return len(first) if isinstance(first, torch.Tensor) else None


class StepSeeding(pl.Callback):
    """Before every training batch: `seed_all(mix(seed, epoch, batch_idx, rank))` and the batch's sample seeds
    set for the model; after it (or on an exception), the seeds cleared."""

    def __init__(self, seed: int) -> None:
        self.seed = int(seed)

    def on_train_batch_start(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, batch: Any, batch_idx: int
    ) -> None:
        seed_all(mix_seed(self.seed, trainer.current_epoch, batch_idx, trainer.global_rank))
        sampler = training_sampler(trainer)
        if sampler is None:  # no per-sample seeds: drop-path draws from the generator seeded above
            set_sample_seeds(None)
            return
        # Lightning's batch_idx counts the epoch's batches, also after a resume inside the epoch (the loader
        # then starts at the saved position): batch `batch_idx` of this rank is the one the sampler yielded
        seeds = sampler.batch_seeds(sampler.epoch, batch_idx)
        size = batch_size_of(batch)
        if size is not None and size != len(seeds):
            raise RuntimeError(
                f"training batch {batch_idx} of epoch {sampler.epoch} holds {size} samples, but the sampler's "
                f"batch {batch_idx} has {len(seeds)}: the sample seeds would belong to other images."
            )
        set_sample_seeds(seeds)

    def on_train_batch_end(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        set_sample_seeds(None)

    def on_exception(self, trainer: pl.Trainer, pl_module: pl.LightningModule, exception: BaseException) -> None:
        set_sample_seeds(None)
