"""Randomness of a training step as a function of where the step is, so a resumed run draws what the
uninterrupted run drew (docs/resume.md).

`StepSeeding` re-seeds Python's, NumPy's and torch's generators (CPU and every CUDA device) before every
training batch from (seed, epoch, batch index, rank). Dropout masks, drop-path, Mixup/CutMix and anything else
drawn inside a step then depend on the step alone: no generator state has to travel in a checkpoint, and
nothing that ran before the step (validation, a data loader starting its workers, a checkpoint being written)
can shift the draws. Sample augmentation is seeded per image by `vitlab.data.sampling`; Performer's feature
redraws are seeded by (seed, step, layer) already.
"""

from __future__ import annotations

import random
from typing import Any

import numpy as np
import pytorch_lightning as pl
import torch

from vitlab.data.sampling import mix_seed


def seed_all(seed: int) -> None:
    """Seed Python, NumPy and torch (CPU and all CUDA devices) from one 63-bit integer."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


class StepSeeding(pl.Callback):
    """Before every training batch: `seed_all(mix(seed, epoch, batch_idx, rank))`."""

    def __init__(self, seed: int) -> None:
        self.seed = int(seed)

    def on_train_batch_start(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, batch: Any, batch_idx: int
    ) -> None:
        seed_all(mix_seed(self.seed, trainer.current_epoch, batch_idx, trainer.global_rank))
