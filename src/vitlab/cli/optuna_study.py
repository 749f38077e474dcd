"""Optuna searches (`hparams_search=optuna`): a search whose every trial failed ends in one paragraph.

hydra-optuna-sweeper records a failed trial as FAIL (vitlab's job returns no metric for a failed run) and goes
on; but when no trial completed, it then asks the study for its best trial and dies with Optuna's
`ValueError: Record does not exist.` traceback. `ReportFailedSearch`, a Hydra callback of
configs/hparams_search/optuna.yaml, wraps the sweeper's `sweep` so that case says what happened instead: the
study, how many trials failed, where their errors are, and that the study is kept (exit status 1).
"""

from __future__ import annotations

import functools
import sys
from typing import Any

from hydra.experimental.callback import Callback
from omegaconf import DictConfig


class ReportFailedSearch(Callback):
    """Registered by configs/hparams_search/optuna.yaml; active for the Optuna sweeper only."""

    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        try:
            from hydra_plugins.hydra_optuna_sweeper._impl import OptunaSweeperImpl
        except ImportError:  # the `sweep` extra is missing: vitlab.extras has said so before Hydra started
            return
        if not getattr(OptunaSweeperImpl.sweep, "_vitlab_wrapped", False):
            OptunaSweeperImpl.sweep = _wrap(OptunaSweeperImpl.sweep)


def _wrap(sweep: Any) -> Any:
    @functools.wraps(sweep)
    def wrapped(self: Any, arguments: list[str]) -> None:
        try:
            return sweep(self, arguments)
        except ValueError:
            states = trial_states(self.study_name, self.storage)
            if states is None or "COMPLETE" in states:
                raise  # another problem: the sweeper's own traceback
            print(
                f"\nvitlab: error: no trial of the Optuna study {self.study_name} completed ({states.count('FAIL')} "
                f"of {len(states)} trials FAIL), so it has no best value. Each failed trial's error is in its run "
                f"directory's results.json under {self.sweep_dir}; the study is kept in {self.storage} "
                "and continues when the same command runs again.\n",
                file=sys.stderr,
            )
            raise SystemExit(1) from None

    wrapped._vitlab_wrapped = True  # type: ignore[attr-defined]
    return wrapped


def trial_states(study_name: str | None, storage: Any) -> list[str] | None:
    """The state names of the study's trials (None when it cannot be read, e.g. an in-memory study)."""
    import optuna

    if study_name is None or storage is None:
        return None
    try:
        study = optuna.load_study(study_name=study_name, storage=storage)
    except Exception:  # unreadable: the sweeper's own error stands
        return None
    return [trial.state.name for trial in study.trials]
