"""Continue a checkpoint with a smaller micro-batch: Lightning's batch counters in the new micro-batches.

An out-of-memory retry (docs/runs.md#retries) continues a run from its last checkpoint with half the
micro-batch and twice the gradient accumulation. The training loader's position is saved in samples
(`vitlab.data.sampling.ResumableLoader`), so it starts at the same image; Lightning's own count of training
batches (`epoch_loop.batch_progress`) is in batches of the size they were saved with. It decides where the
epoch ends and where an accumulation completes, so it is rescaled here, before the loops are restored: the
same images, the same optimiser steps, each made of twice as many half batches.
"""

from __future__ import annotations

from typing import Any

import pytorch_lightning as pl


def saved_rank_batch(checkpoint: dict[str, Any]) -> int | None:
    """The per-process batch the checkpoint's training loader counted in (None: a checkpoint from before it was
    saved, or no resumable loader)."""
    loaders = checkpoint.get("loops", {}).get("fit_loop", {}).get("state_dict", {}).get("combined_loader")
    states = loaders if isinstance(loaders, list) else [loaders]
    sizes = {int(s["rank_batch"]) for s in states if isinstance(s, dict) and s.get("rank_batch")}
    return sizes.pop() if len(sizes) == 1 else None


def rescale_batch_progress(checkpoint: dict[str, Any], factor: int) -> None:
    """`epoch_loop.batch_progress` (total and current) in batches `factor` times smaller: the batches processed
    times `factor`, and each other count as far behind them as it was. A checkpoint written at a batch's end
    has `completed` one behind `processed`, which Lightning reads as "restart after this batch"; that stays."""
    progress = checkpoint.get("loops", {}).get("fit_loop", {}).get("epoch_loop.batch_progress")
    if not isinstance(progress, dict):
        return
    for part in ("total", "current"):
        counts = progress.get(part)
        if not isinstance(counts, dict) or not isinstance(counts.get("processed"), int):
            continue
        processed = counts["processed"]
        for key, value in counts.items():
            if isinstance(value, int) and not isinstance(value, bool):
                counts[key] = processed * factor - (processed - value)


class MicroBatchResume(pl.Callback):
    """Rescales a checkpoint's batch counters when the training loader's batch is now smaller than the one it
    was saved with (by a whole factor; anything else is left as saved)."""

    def on_load_checkpoint(self, trainer: pl.Trainer, pl_module: pl.LightningModule, checkpoint: dict) -> None:
        saved = saved_rank_batch(checkpoint)
        now = current_rank_batch(trainer)
        if saved is not None and now and now < saved and saved % now == 0:
            rescale_batch_progress(checkpoint, saved // now)


def current_rank_batch(trainer: pl.Trainer) -> int | None:
    """The per-process batch the training loader will yield (it is built after the checkpoint is read)."""
    from vitlab.data.sampling import EpochSampler

    datamodule = getattr(trainer, "datamodule", None)
    train_set = getattr(datamodule, "train_set", None)
    if datamodule is None or train_set is None:
        return None
    split = int(getattr(datamodule, "batch_split", 1))
    world, rank = trainer.world_size, trainer.global_rank
    return EpochSampler(train_set, datamodule.per_device_batch_size, world, rank, split=split).rank_batch
