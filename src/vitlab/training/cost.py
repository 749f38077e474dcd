"""`CostMeter`: what a run costs, for `results.json` (`cost/*`) and the loggers.

- `cost/macs_per_image`: multiply-accumulates of one forward pass on one image, counted by
  `torch.utils.flop_counter` (FLOPs / 2), attention matrix products included (softmax attention is
  counted in its explicit form, since the fused SDPA kernels have no FLOP formula on every device).
- `cost/macs_no_attn_per_image`: the same without the attention kernels' products (q kᵀ, softmax · v, and
  the landmark / feature / projection products of the efficient kernels): what EIT's "FLOPs" (ptflops) count.
- `cost/train_img_per_s`: training images per second per process over the timed steps (the first
  `untimed_steps` are skipped), forward + backward + optimiser step.
- `cost/peak_mem_mb`: peak CUDA memory allocated on a GPU; on CPU the process's peak resident memory
  (`ru_maxrss`), which includes the Python process itself.
"""

from __future__ import annotations

import resource
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import pytorch_lightning as pl
import torch
from timm.models.vision_transformer import Attention
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from vitlab.models.mixers.attention import AttentionKernel
from vitlab.models.mixers.softmax import SoftmaxKernel


@contextmanager
def explicit_softmax(model: nn.Module) -> Iterator[None]:
    """Temporarily compute softmax attention as explicit matrix products, so the FLOP counter sees them."""
    changed: list[tuple[nn.Module, str, object]] = []
    for module in model.modules():
        if isinstance(module, SoftmaxKernel):
            changed.append((module, "impl", module.impl))
            module.impl = "naive"
        elif isinstance(module, Attention):
            changed.append((module, "fused_attn", module.fused_attn))
            module.fused_attn = False
    try:
        yield
    finally:
        for module, name, value in changed:
            setattr(module, name, value)


def macs_breakdown(model: nn.Module, img_size: int, device: torch.device | str = "cpu") -> dict[str, int]:
    """{"macs": all, "macs_no_attn": without the attention kernels' products} for one image."""
    root = type(model).__name__
    kernels = {f"{root}.{n}" for n, m in model.named_modules() if isinstance(m, AttentionKernel)}
    timm_attn = {f"{root}.{n}" for n, m in model.named_modules() if isinstance(m, Attention)}
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad(), explicit_softmax(model), FlopCounterMode(display=False) as counter:
            model(torch.zeros(1, 3, img_size, img_size, device=device))
    finally:
        model.train(was_training)
    counts = counter.get_flop_counts()
    attention = sum(sum(counts[k].values()) for k in kernels if k in counts)
    attention += sum(flops for k in timm_attn if k in counts for op, flops in counts[k].items() if "bmm" in str(op))
    total = counter.get_total_flops()
    return {"macs": int(total // 2), "macs_no_attn": int((total - attention) // 2)}


def macs_per_image(model: nn.Module, img_size: int, device: torch.device | str = "cpu") -> int:
    """Multiply-accumulates of `model` on one (1, 3, img_size, img_size) image, attention included."""
    return macs_breakdown(model, img_size, device)["macs"]


class CostMeter(pl.Callback):
    """Measures MACs per image at fit start, training throughput and peak memory during fit."""

    def __init__(self, img_size: int, untimed_steps: int = 2) -> None:
        self.img_size, self.untimed_steps = img_size, untimed_steps
        self.macs: dict[str, int] | None = None
        self._images, self._seconds, self._steps = 0, 0.0, 0
        self._all_images, self._all_seconds = 0, 0.0  # warm-up included: the fallback for very short runs
        self._t0 = 0.0

    def on_fit_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        model = getattr(pl_module, "model", pl_module)
        self.macs = macs_breakdown(model, self.img_size, pl_module.device)
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
        seconds = time.perf_counter() - self._t0
        self._all_seconds += seconds
        self._all_images += len(batch[0])
        if self._steps > self.untimed_steps:
            self._seconds += seconds
            self._images += len(batch[0])

    def on_fit_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        """Send the `cost/*` numbers to every logger too (CSV, TensorBoard, W&B), not only to results.json."""
        if trainer.is_global_zero:
            numbers = {k: float(v) for k, v in self.results(pl_module.device).items() if v is not None}
            for logger in trainer.loggers:
                logger.log_metrics(numbers, step=trainer.global_step)

    def _throughput(self) -> float | None:
        """Images/s over the steps after warm-up; over every step when the run had no more than warm-up."""
        if self._seconds > 0:
            return round(self._images / self._seconds, 2)
        return round(self._all_images / self._all_seconds, 2) if self._all_seconds > 0 else None

    def results(self, device: torch.device | None = None) -> dict[str, float | int | None]:
        if device is not None and device.type == "cuda":
            peak_mb = torch.cuda.max_memory_allocated(device) / 2**20
        else:
            peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux reports KiB
        return {
            "cost/macs_per_image": self.macs["macs"] if self.macs else None,
            "cost/macs_no_attn_per_image": self.macs["macs_no_attn"] if self.macs else None,
            "cost/train_img_per_s": self._throughput(),
            "cost/peak_mem_mb": round(peak_mb, 1),
        }
