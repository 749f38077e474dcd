"""Signals that end a run early — SIGTERM (SLURM preemption, `kill`), SIGUSR1/SIGUSR2 (SLURM's warning
before the time limit, `--signal`), SIGINT (Ctrl+C) — become a saved checkpoint and a clean stop.

A handler only records the first signal; `InterruptGuard` acts on it at the next safe point — the end of an
optimiser step (not inside a gradient accumulation; after the validation that follows the step, if one
does), the end of an epoch, a test batch — where every rank agrees (one tiny all-reduce per step under
DDP, since `kill` reaches rank 0 only), writes `last.ckpt` through `LastCheckpoint` and raises
`TrainingInterrupted`. The CLI then writes `results.json` with `status: interrupted` and exits with
128 + the signal number.

While the checkpoint is written, further signals are ignored (the write is atomic in any case); a second
Ctrl+C at any other time stops at once, without a new checkpoint.

Lightning installs its own SIGTERM handler when a fit starts (which would exit with status 0 and no
checkpoint); the guard puts ours back as soon as the trainer runs its first hook.
"""

from __future__ import annotations

import logging
import signal
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from types import FrameType
from typing import Any

import pytorch_lightning as pl
import torch

from vitlab.training.checkpointing import LastCheckpoint, StepBoundaries

log = logging.getLogger("vitlab")

SIGNALS = (signal.SIGTERM, signal.SIGINT, signal.SIGUSR1, signal.SIGUSR2)
# the signals SLURM sends ahead of a time limit (`--signal`; submitit uses USR2): the job should come back
WARNING_SIGNALS = (signal.SIGUSR1, signal.SIGUSR2)


class TrainingInterrupted(Exception):
    """A run stopped by a signal; `checkpoint` is the file it can continue from (None if nothing new)."""

    def __init__(self, signum: int, checkpoint: Path | None = None, epoch: int | None = None, step: int | None = None):
        self.signum, self.checkpoint, self.epoch, self.step = int(signum), checkpoint, epoch, step
        where = f" at epoch {epoch}, step {step}" if step is not None else ""
        saved = f"; continue from {checkpoint}" if checkpoint else ""
        super().__init__(f"interrupted by {signal_name(self.signum)}{where}{saved}")

    @property
    def exit_code(self) -> int:
        return 128 + self.signum


def signal_name(signum: int) -> str:
    try:
        return signal.Signals(signum).name
    except ValueError:
        return f"signal {signum}"


class _State:
    """The process's pending interrupt (set by the handler, read by the guard)."""

    signum: int | None = None
    saving = False


class StopNow(BaseException):
    """A second Ctrl+C: stop at once. A `BaseException` Lightning re-raises (it would turn a KeyboardInterrupt
    into `sys.exit(1)`), so the run ends with 130 like any interrupted command."""


def pending_signal() -> int | None:
    return _State.signum


def _handle(signum: int, frame: FrameType | None) -> None:
    if _State.signum is None:
        _State.signum = signum
        log.warning("received %s: saving a checkpoint at the next step boundary, then stopping", signal_name(signum))
    elif signum == signal.SIGINT and not _State.saving:
        raise StopNow  # a second Ctrl+C: stop now


def install_handlers() -> None:
    """(Re-)install vitlab's handlers for `SIGNALS` (main thread only; elsewhere a no-op)."""
    if threading.current_thread() is threading.main_thread():
        for signum in SIGNALS:
            signal.signal(signum, _handle)


@contextmanager
def catch_interrupts() -> Iterator[None]:
    """Handle `SIGNALS` as described above for the duration of a run; restore the previous handlers after."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = {signum: signal.getsignal(signum) for signum in SIGNALS}
    _State.signum, _State.saving = None, False
    install_handlers()
    try:
        yield
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler if handler is not None else signal.SIG_DFL)
        _State.signum, _State.saving = None, False


def raise_if_interrupted() -> None:
    """Outside a fit (before it, between fit and test): stop without writing anything new."""
    if _State.signum is not None:
        raise TrainingInterrupted(_State.signum)


def _agreed_signal(trainer: pl.Trainer) -> int | None:
    """The pending signal, agreed on by all ranks (any rank's signal stops them all at the same step)."""
    signum = _State.signum or 0
    if trainer.world_size > 1 and torch.distributed.is_available() and torch.distributed.is_initialized():
        flag = torch.tensor([signum], device=trainer.strategy.root_device)
        torch.distributed.all_reduce(flag, op=torch.distributed.ReduceOp.MAX)
        signum = int(flag.item())
    return signum or None


class InterruptGuard(StepBoundaries):
    """Acts on a pending signal at safe points; see the module docstring."""

    def on_sanity_check_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        install_handlers()  # replace the SIGTERM handler Lightning registered when the fit started

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        install_handlers()

    def on_test_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        install_handlers()

    def at_step(self, trainer: pl.Trainer) -> None:
        self._stop_if_signalled(trainer, save=True)

    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._stop_if_signalled(trainer, save=True)

    def on_test_batch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule, *args: Any, **kwargs: Any) -> None:
        self._stop_if_signalled(trainer, save=False)

    def _stop_if_signalled(self, trainer: pl.Trainer, save: bool) -> None:
        signum = _agreed_signal(trainer)
        if signum is None:
            return
        path = None
        saver = next((c for c in trainer.callbacks if isinstance(c, LastCheckpoint)), None)
        if save and saver is not None and saver.last_saved_step == trainer.global_step:
            path = saver.path  # written at this very step already (the epoch-end checkpoint)
        elif save and saver is not None:
            _State.saving = True
            try:
                path = saver.save(trainer)
            finally:
                _State.saving = False
            log.warning("checkpoint written: %s (epoch %d, step %d)", path, trainer.current_epoch, trainer.global_step)
        elif save:
            log.warning("no last_checkpoint callback: nothing saved; the run restarts from its last checkpoint")
        raise TrainingInterrupted(signum, path, trainer.current_epoch, trainer.global_step)
