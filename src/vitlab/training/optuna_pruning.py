"""Pruning an Optuna trial from inside its training run (docs/reproduce.md, "Hyper-parameter search").

vitlab's sweeper (hydra_plugins.vitlab_optuna) asks the study for a trial and launches its run through Hydra's
launcher, which may start it in another process or on another machine (SLURM). So the run finds its trial from
what the job's environment carries -- `VITLAB_OPTUNA_TRIAL`, a JSON object {storage, study, trial, pruner,
monitor} that the sweeper sets per job with `hydra.job.env_set` -- and `OptunaPruning` reports the monitored
metric (the search's `optimised_metric`, `val/acc`) after each validation epoch and asks the pruner whether
to stop. A run told to stop raises `Pruned`: vitlab.cli.runner records `"status": "pruned"` (not failed) and
the sweeper tells Optuna PRUNED. Optuna is imported only in such a run.
"""

from __future__ import annotations

import json
import logging
import os
from typing import Any

import pytorch_lightning as pl

log = logging.getLogger("vitlab")

ENV = "VITLAB_OPTUNA_TRIAL"


class Pruned(Exception):
    """The study's pruner stopped this trial's run: not a failure (vitlab.cli.runner records "pruned")."""


def open_storage(storage: str) -> Any:
    """Optuna's storage: a journal file for a path, the RDB storage for a URL (`sqlite:///...`)."""
    import optuna

    if "://" in storage:
        return optuna.storages.RDBStorage(storage)
    from optuna.storages.journal import JournalFileBackend

    return optuna.storages.JournalStorage(JournalFileBackend(os.path.expanduser(storage)))


def make_pruner(name: str, options: dict[str, Any]) -> Any:
    """Optuna's pruner of that name (`none`: the NopPruner; no trial is pruned)."""
    import optuna

    if name == "median":
        return optuna.pruners.MedianPruner(**options)
    if name == "hyperband":
        return optuna.pruners.HyperbandPruner(**options)
    return optuna.pruners.NopPruner()


def pruning_callbacks() -> list[pl.Callback]:
    """`[OptunaPruning]` in a run that is an Optuna trial of vitlab's sweeper, else nothing."""
    text = os.environ.get(ENV)
    if not text:
        return []
    spec = json.loads(text)
    return [OptunaPruning(spec["storage"], spec["study"], int(spec["trial"]), spec["pruner"], spec["monitor"])]


class OptunaPruning(pl.Callback):
    """Report `monitor` to the trial after each validation epoch; raise `Pruned` when the pruner says so. Rank 0
    talks to the study and every rank gets its answer (one broadcast), so all processes stop together."""

    def __init__(self, storage: str, study: str, trial: int, pruner: dict[str, Any], monitor: str) -> None:
        self.storage, self.study_name, self.number, self.monitor = storage, study, trial, monitor
        self.pruner = pruner
        self._trial: Any = None

    def _open(self) -> Any:
        import optuna

        if self._trial is None:
            storage = open_storage(self.storage)
            pruner = make_pruner(self.pruner["name"], self.pruner.get("options") or {})
            study = optuna.load_study(study_name=self.study_name, storage=storage, pruner=pruner)
            study_id = storage.get_study_id_from_name(self.study_name)
            self._trial = optuna.trial.Trial(
                study, storage.get_trial_id_from_study_id_trial_number(study_id, self.number)
            )
        return self._trial

    def on_validation_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if trainer.sanity_checking:
            return
        epoch = trainer.current_epoch
        value = trainer.callback_metrics.get(self.monitor)
        prune = False
        if trainer.is_global_zero and value is not None:
            trial = self._open()
            trial.report(float(value), epoch)
            prune = trial.should_prune()
        prune = trainer.strategy.broadcast(prune, src=0)
        if prune:
            raise Pruned(
                f"pruned by the Optuna study {self.study_name}'s pruner after epoch {epoch} "
                f"({self.monitor} {float(value) if value is not None else float('nan'):.4f}; trial {self.number})"
            )
