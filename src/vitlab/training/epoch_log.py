"""One line per epoch in the console and the run's log file, whatever the terminal.

A SLURM log or `| tee` gets no progress bar (it draws only on a terminal), so without this a 5-minute run
would print nothing between "run directory: ..." and its final line. The line is written through the `vitlab`
logger, which Hydra sends to the console and to `<run dir>/train.log`:

    epoch 3/30  train/loss 0.812  val/acc 0.9312  lr 9.51e-04  412 img/s  elapsed 0:01:23  ETA 0:12:27
"""

from __future__ import annotations

import logging
import time
from datetime import timedelta
from typing import Any

import pytorch_lightning as pl
import torch
from pytorch_lightning.utilities import rank_zero_only

log = logging.getLogger("vitlab")

# the metrics shown when the module logs them (the first of each tuple that exists)
SHOWN = (("train/loss", ("train/loss_epoch", "train/loss")), ("val/acc", ("val/acc",)), ("val/loss", ("val/loss",)))


def _clock(seconds: float) -> str:
    return str(timedelta(seconds=round(seconds)))


class EpochLog(pl.Callback):
    """Log epoch, train/loss, val/acc, val/loss, lr, training img/s (this epoch, all ranks), elapsed and ETA."""

    def __init__(self) -> None:
        self._fit_start = self._epoch_start = self._last_batch_end = 0.0
        self._epoch_samples = 0
        self._first_epoch: int | None = None  # the epoch this process started at (a resumed run starts later)

    def on_fit_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._fit_start = time.monotonic()

    def on_train_epoch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._epoch_start, self._epoch_samples = time.monotonic(), 0
        if self._first_epoch is None:
            self._first_epoch = trainer.current_epoch

    def on_train_batch_end(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        images = batch[0] if isinstance(batch, (list, tuple)) else batch
        if isinstance(images, torch.Tensor):
            self._epoch_samples += int(images.shape[0]) * trainer.world_size
        self._last_batch_end = time.monotonic()  # img/s counts training time only, not the validation after it

    @rank_zero_only
    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        # Lightning runs the epoch's validation before this hook: its val/* metrics are the current ones
        log.info(self.line(trainer))

    def line(self, trainer: pl.Trainer) -> str:
        now = time.monotonic()
        epoch, max_epochs = trainer.current_epoch + 1, trainer.max_epochs
        parts = [f"epoch {epoch}/{max_epochs}" if max_epochs and max_epochs > 0 else f"epoch {epoch}"]
        metrics = trainer.callback_metrics
        for label, keys in SHOWN:
            value = next((metrics[k] for k in keys if k in metrics), None)
            if value is not None:
                parts.append(f"{label} {float(value):.4g}")
        if trainer.optimizers:
            # the largest group lr: with layer-wise decay the head's (scale 1), the schedule's own lr
            parts.append(f"lr {max(g['lr'] for g in trainer.optimizers[0].param_groups):.2e}")
        seconds = self._last_batch_end - self._epoch_start
        if seconds > 0 and self._epoch_samples:
            parts.append(f"{self._epoch_samples / seconds:.0f} img/s")
        elapsed = now - self._fit_start
        parts.append(f"elapsed {_clock(elapsed)}")
        done = epoch - (self._first_epoch or 0)
        if max_epochs and max_epochs > 0 and done > 0 and epoch < max_epochs:
            parts.append(f"ETA {_clock(elapsed / done * (max_epochs - epoch))}")
        return "  ".join(parts)
