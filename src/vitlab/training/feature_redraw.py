"""Redraw Performer random features every `redraw_interval` optimizer steps (off unless a kernel asks)."""

from __future__ import annotations

from typing import Any

import pytorch_lightning as pl
import torch

from vitlab.models.mixers.performer import PerformerKernel


class RandomFeatureRedraw(pl.Callback):
    """Calls `PerformerKernel.redraw` on kernels whose `redraw_interval` divides the optimizer step.

    The generator is seeded from (seed, step, layer), so every DDP rank draws the same features without
    communicating, and a resumed run draws what the uninterrupted run would have.
    """

    def __init__(self, seed: int = 0) -> None:
        self.seed = seed
        self._last_step = -1

    def on_train_batch_start(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, batch: Any, batch_idx: int
    ) -> None:
        step = trainer.global_step
        if step == 0 or step == self._last_step:  # once per optimizer step, also under gradient accumulation
            return
        self._last_step = step
        kernels = [m for m in pl_module.modules() if isinstance(m, PerformerKernel)]
        for layer, kernel in enumerate(kernels):
            if kernel.redraw_interval and step % kernel.redraw_interval == 0:
                kernel.redraw(torch.Generator().manual_seed(self.seed * 1_000_003 + step * 1_009 + layer))
