"""What a run can train before it starts: a run that would make no optimiser step is refused, a warm-up the run
cannot finish is said in one line.

Without this check a config that allows no training batch (`trainer.limit_train_batches=0`, `max_steps=0`)
ran to the end, recorded `status: ok` with no checkpoint and printed the *untrained* model's test accuracy as
its result; a warm-up longer than the run left the learning rate below `optim.lr` from start to end.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping
from typing import Any

from vitlab.errors import ConfigError
from vitlab.training.optim import stepping_batches

log = logging.getLogger("vitlab")


def optimiser_steps(trainer: Any, datamodule: Any) -> int:
    """The optimiser steps this run makes (per process), as its schedule counts them."""
    return stepping_batches(trainer, datamodule.train_batches_per_epoch())


def check_training_budget(trainer: Any, datamodule: Any, scheduler: Mapping[str, Any] | None, lr: float) -> int | None:
    """Raise `ConfigError` when the run would make no optimiser step or has no validation image; log one line
    when the warm-up outlasts the run (not for `fast_dev_run`, a check of the code, not a training). Returns the
    run's optimiser steps; None for a data module that is not a vitlab `ImageDataModule`, whose batches cannot
    be counted before its loader is built."""
    if not hasattr(datamodule, "train_batches_per_epoch"):
        return None
    sizes = datamodule.split_sizes()
    if sizes.get("val", 1) == 0:
        raise ConfigError(
            f"the validation split is empty ({sizes}): the best checkpoint and early stopping are chosen on val/acc. "
            "Give the data set a validation split (e.g. data.val_fraction above 0) or more data."
        )
    steps = optimiser_steps(trainer, datamodule)
    if steps < 1:
        raise ConfigError(
            f"this run would make no optimiser step: {datamodule.train_batches_per_epoch()} training batches per "
            f"epoch, trainer.limit_train_batches={trainer.limit_train_batches}, trainer.max_epochs="
            f"{trainer.max_epochs}, trainer.max_steps={trainer.max_steps}, trainer.accumulate_grad_batches="
            f"{trainer.accumulate_grad_batches}. Allow at least one training batch, or set train=false to only test."
        )
    warmup_epochs = float((scheduler or {}).get("warmup_epochs") or 0)
    if warmup_epochs > 0 and trainer.max_epochs and trainer.max_epochs > 0 and not trainer.fast_dev_run:
        # the schedule's warm-up in optimiser steps, as build_scheduler lays it out (updates per epoch)
        warmup_steps = warmup_epochs * max(1, math.ceil(steps / trainer.max_epochs))
        if warmup_steps >= steps:
            # timm's warm-up: update t (0-based) uses start + (lr - start) * t / warmup_steps
            start = float((scheduler or {}).get("warmup_lr") or 0.0)
            last = start + (lr - start) * (steps - 1) / warmup_steps
            log.warning(
                "scheduler.warmup_epochs=%g is %d optimiser steps and this run makes %d: the learning rate rises "
                "for the whole run, its last update uses %.3g (optim.lr=%g is never reached) and the schedule's "
                "decay never starts. Shorten the warm-up or lengthen the run.",
                warmup_epochs, warmup_steps, steps, last, lr,
            )  # fmt: skip
    return steps
