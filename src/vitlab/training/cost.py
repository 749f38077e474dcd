"""`CostMeter`: what a run costs, for `results.json` (`cost/*`) and the loggers.

- `cost/macs_per_image`: multiply-accumulates of one forward pass on one image, counted by
  `torch.utils.flop_counter` (FLOPs / 2; attention matrix products included).
- `cost/train_img_per_s`: training images per second per process over the timed steps (the first
  `warmup_steps` are skipped), forward + backward + optimiser step.
- `cost/peak_mem_mb`: peak CUDA memory allocated on a GPU; on CPU the process's peak resident memory
  (`ru_maxrss`), which includes the Python process itself.
"""

from __future__ import annotations

import resource
import time
from typing import Any

import pytorch_lightning as pl
import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode


def macs_per_image(model: nn.Module, img_size: int, device: torch.device | str = "cpu") -> int:
    """Multiply-accumulates of `model` on one (1, 3, img_size, img_size) image."""
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad(), FlopCounterMode(display=False) as counter:
            model(torch.zeros(1, 3, img_size, img_size, device=device))
    finally:
        model.train(was_training)
    return int(counter.get_total_flops() // 2)


class CostMeter(pl.Callback):
    """Measures MACs per image at fit start, training throughput and peak memory during fit."""

    def __init__(self, img_size: int, warmup_steps: int = 2) -> None:
        self.img_size, self.warmup_steps = img_size, warmup_steps
        self.macs: int | None = None
        self._images, self._seconds, self._steps = 0, 0.0, 0
        self._t0 = 0.0

    def on_fit_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        model = getattr(pl_module, "model", pl_module)
        self.macs = macs_per_image(model, self.img_size, pl_module.device)
        if torch.cuda.is_available() and pl_module.device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(pl_module.device)

    def _sync(self, pl_module: pl.LightningModule) -> None:
        if pl_module.device.type == "cuda":
            torch.cuda.synchronize(pl_module.device)

    def on_train_batch_start(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, batch: Any, batch_idx: int
    ) -> None:
        self._sync(pl_module)
        self._t0 = time.perf_counter()

    def on_train_batch_end(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        self._sync(pl_module)
        self._steps += 1
        if self._steps > self.warmup_steps:
            self._seconds += time.perf_counter() - self._t0
            self._images += len(batch[0])

    def results(self, device: torch.device | None = None) -> dict[str, float | int | None]:
        if device is not None and device.type == "cuda":
            peak_mb = torch.cuda.max_memory_allocated(device) / 2**20
        else:
            peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux reports KiB
        return {
            "cost/macs_per_image": self.macs,
            "cost/train_img_per_s": round(self._images / self._seconds, 2) if self._seconds > 0 else None,
            "cost/peak_mem_mb": round(peak_mb, 1),
        }
