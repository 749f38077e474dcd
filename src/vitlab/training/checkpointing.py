"""`LastCheckpoint`: the checkpoint a run continues from, written so that it is never half a file.

`<dirpath>/last.ckpt` is written every `every_n_epochs` epochs (after validation, so it holds the epoch's
best-model bookkeeping), every `every_n_train_steps` optimiser steps if set, and at once when a run is
interrupted (`vitlab.training.interrupts`). Each write goes to `last.ckpt.tmp`, is flushed to disk and then
renamed over `last.ckpt`: a kill at any moment — a second signal, SIGKILL, the node going away — leaves
the previous complete checkpoint or the new one, never a truncated file; a failed write (a full disk) removes
the `.tmp` and is raised as `vitlab.errors.WriteFailed` naming `last.ckpt`.

A checkpoint holds the model, optimiser, scheduler, AMP grad scaler, callback states (EMA, best-model
tracking), the loops' progress and the training loader's position in its epoch (`ResumableLoader`);
randomness is re-derived from the position (`StepSeeding`, `EpochSampler`), so it is all a run needs to
continue bit for bit.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import pytorch_lightning as pl
from pytorch_lightning.callbacks import Checkpoint

from vitlab.errors import ConfigError, WriteFailed
from vitlab.runs.files import discard, fsync_replace, tmp_name

log = logging.getLogger("vitlab")

LAST = "last.ckpt"
STATE_KEY = "vitlab"  # what vitlab adds to a checkpoint (Lightning does not save `trainer.should_stop`)


class StepBoundaries(Checkpoint):
    """Calls `at_step(trainer)` at each optimiser-step boundary where a checkpoint may be written: right after
    the step, or after the validation that follows it (see `boundary`). A `Checkpoint` subclass, so Lightning
    runs it after every other callback (an EMA update of the step is in what is written)."""

    _step_at_start, _deferred = -1, False

    def at_step(self, trainer: pl.Trainer) -> None:
        raise NotImplementedError

    def on_train_batch_start(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, batch: Any, batch_idx: int
    ) -> None:
        self._step_at_start = trainer.global_step

    def on_train_batch_end(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        where = boundary(trainer, stepped=trainer.global_step > self._step_at_start)
        self._deferred = where == "before_validation"
        if where == "step":
            self.at_step(trainer)

    def on_validation_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self._deferred and not trainer.sanity_checking:
            self._deferred = False
            self.at_step(trainer)


class LastCheckpoint(StepBoundaries):
    """Writes `<dirpath>/last.ckpt` atomically; see the module docstring.

    Args:
        dirpath: the run's checkpoint folder.
        every_n_epochs: write at the end of every n-th epoch (0: never at epoch ends).
        every_n_train_steps: also write every n optimiser steps, inside an epoch (null: only at epoch ends).
    """

    def __init__(self, dirpath: str | Path, every_n_epochs: int = 1, every_n_train_steps: int | None = None) -> None:
        for key, value in (("every_n_epochs", every_n_epochs), ("every_n_train_steps", every_n_train_steps)):
            if value is not None and (not isinstance(value, int) or value < 0):
                raise ConfigError(
                    f"callbacks.last_checkpoint.{key}={value!r} must be a non-negative integer (or null)."
                )
        self.dirpath = Path(dirpath)
        self.every_n_epochs = every_n_epochs
        self.every_n_train_steps = every_n_train_steps or 0
        self.last_saved_step = -1

    @property
    def path(self) -> Path:
        return self.dirpath / LAST

    def save(self, trainer: pl.Trainer) -> Path:
        """Write last.ckpt now (every rank must call this: Lightning gathers state and synchronises)."""
        tmp = tmp_name(self.path)
        try:
            if trainer.is_global_zero:
                self.dirpath.mkdir(parents=True, exist_ok=True)
            trainer.save_checkpoint(tmp)
            if trainer.is_global_zero:
                fsync_replace(tmp, self.path)
        except BaseException as exc:  # the previous last.ckpt stays; no half-written file is left beside it
            if trainer.is_global_zero:
                discard(tmp)
            if isinstance(exc, OSError):
                raise WriteFailed(self.path, exc) from exc
            if isinstance(exc, WriteFailed) and exc.path == tmp:
                raise exc.with_path(self.path) from exc.error  # name the checkpoint, not its temporary file
            raise
        trainer.strategy.barrier("LastCheckpoint.save")
        self.last_saved_step = trainer.global_step
        return self.path

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self.last_saved_step = trainer.global_step  # a resumed run has this step saved already

    def at_step(self, trainer: pl.Trainer) -> None:
        step = trainer.global_step
        if self.every_n_train_steps and step != self.last_saved_step and step % self.every_n_train_steps == 0:
            self.save(trainer)

    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self.every_n_epochs and (trainer.current_epoch + 1) % self.every_n_epochs == 0:
            self.save(trainer)

    def on_save_checkpoint(self, trainer: pl.Trainer, pl_module: pl.LightningModule, checkpoint: dict) -> None:
        checkpoint[STATE_KEY] = {"should_stop": bool(trainer.should_stop)}  # early stopping decided, fit is over

    def on_load_checkpoint(self, trainer: pl.Trainer, pl_module: pl.LightningModule, checkpoint: dict) -> None:
        if checkpoint.get(STATE_KEY, {}).get("should_stop"):
            trainer.should_stop = True  # Lightning does not save it: a resumed run would train on

    def state_dict(self) -> dict[str, Any]:
        return {"dirpath": str(self.dirpath)}


def boundary(trainer: pl.Trainer, stepped: bool) -> str:
    """Where the training batch that just ended leaves the run, for writing a checkpoint there:

    - `inside`: within a gradient accumulation (no optimiser step yet): the accumulated gradients are in no
      checkpoint, so never here;
    - `epoch_end`: the epoch's last batch: its validation follows, write at the epoch's end;
    - `before_validation`: a validation inside the epoch (`val_check_interval`) follows: write after it, or a
      resumed run would skip that validation;
    - `step`: a plain optimiser-step boundary.
    """
    loop = trainer.fit_loop.epoch_loop
    if not stepped:
        return "inside"
    if loop.batch_progress.is_last_batch:
        return "epoch_end"
    try:  # Lightning's own rule for "validate after this batch" (private, so guarded)
        follows = bool(loop._should_check_val_fx(trainer.fit_loop._data_fetcher))
    except (AttributeError, TypeError):
        follows = False
    return "before_validation" if follows else "step"
