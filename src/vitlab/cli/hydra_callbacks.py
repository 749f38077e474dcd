"""Hydra callbacks that vitlab's configs register (`hydra.callbacks`)."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

from hydra.experimental.callback import Callback
from omegaconf import DictConfig, OmegaConf


class CheckRunDirectory(Callback):
    """Before Hydra creates the run directory or writes `.hydra/` into it: the directory must be writable, and
    must not hold a finished run (whose files would be overwritten). One paragraph and exit 2 otherwise."""

    def on_run_start(self, config: DictConfig, **kwargs: Any) -> None:
        run_dir = Path(str(config.hydra.run.dir))
        _check(run_dir, "hydra.run.dir", finished_refused=True)
        _same_experiment(run_dir, list(OmegaConf.select(config, "hydra.overrides.task", default=None) or []))

    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        _check(Path(str(config.hydra.sweep.dir)), "hydra.sweep.dir", finished_refused=False)


def _check(run_dir: Path, key: str, finished_refused: bool) -> None:
    from vitlab.cli.validate import writable_dir
    from vitlab.runs.files import results_status

    if not writable_dir(run_dir):
        _refuse(
            f"{key}={run_dir} cannot be created or written (a file in the way, no permission, or a read-only file "
            "system). Choose another paths.log_dir (or hydra.run.dir)."
        )
    if finished_refused and results_status(run_dir) == "ok":
        _refuse(
            f"{key}={run_dir} holds a finished run (results.json says ok); nothing of it is overwritten. Start a new "
            "run (another hydra.run.dir), or one warm-started from it with ckpt_path=<its checkpoints/last.ckpt>."
        )


def _same_experiment(run_dir: Path, overrides: list[str]) -> None:
    """A directory that already holds a run of another experiment is refused before Hydra writes into it."""
    from vitlab.cli.in_place import another_experiment
    from vitlab.runs.state import MAY_CHANGE_ON_RESUME, RunState, same_experiment

    state = RunState.read(run_dir)
    if state is not None and not same_experiment(state.overrides, overrides, MAY_CHANGE_ON_RESUME):
        _refuse(another_experiment(run_dir, state.overrides, overrides))


def _refuse(message: str) -> None:
    print(f"\nvitlab: error: {message}\n", file=sys.stderr)
    raise SystemExit(2)
