"""The Hydra callback that claims a run directory before anything is written into it (`hydra.callbacks`).

It runs before Hydra writes `.hydra/` (and before `CheckRunDirectory`). A directory that is not vitlab's
(`vitlab.runs.ownership`: another tool's run, a vitlab run whose run.json cannot be read), holds a finished
run, or holds another experiment is refused with one paragraph (exit 2) — or, with `overwrite=true`, its
contents are moved aside to `<dir>.replaced-<time>/` next to it and the run starts in the emptied directory.
A run of the same experiment whose `last.ckpt` cannot be read is refused too, naming the newest readable
checkpoint, unless `resume.fallback=true` (then `vitlab.cli.in_place` continues from that one). For `-m`, the
sweep directory is checked here and each job's directory when the job starts (`open_attempt`).
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any, NoReturn

from hydra.experimental.callback import Callback
from omegaconf import DictConfig, OmegaConf


def flag(config: DictConfig, key: str) -> bool:
    """A boolean switch of the command line (`overwrite`, `resume.fallback`); one paragraph if not a boolean."""
    value = OmegaConf.select(config, key, default=False)
    if value is None:
        return False
    if not isinstance(value, bool):
        refuse(f"{key}={value!r} is not allowed: it must be true or false.")
    return bool(value)


class ClaimRunDirectory(Callback):
    """See the module docstring."""

    def on_run_start(self, config: DictConfig, **kwargs: Any) -> None:
        from vitlab.runs.ownership import is_rank_zero

        if not is_rank_zero():  # ranks > 0 join the directory rank 0 claimed (and may find its files there)
            return
        run_dir = Path(str(config.hydra.run.dir))
        task = str(OmegaConf.select(config, "task_name", default="train"))
        overrides = [str(o) for o in OmegaConf.select(config, "hydra.overrides.task", default=None) or []]
        overwrite = flag(config, "overwrite")
        problem = claim_problem(run_dir, task, overrides)
        if problem is not None:
            if not overwrite:
                refuse(problem)
            moved = move(run_dir, "hydra.run.dir")
            print(f"vitlab: overwrite=true: the old contents of {run_dir} were moved to {moved}", file=sys.stderr)
            return
        if task == "train":
            check_last_checkpoint(run_dir, f"hydra.run.dir={run_dir}", flag(config, "resume.fallback"))

    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        from vitlab.cli.hydra_callbacks import CheckRunDirectory
        from vitlab.runs.ownership import foreign_sweep, is_rank_zero, ways_out

        if not is_rank_zero():
            return
        sweep_dir = Path(str(config.hydra.sweep.dir))
        what = foreign_sweep(sweep_dir, f"{CheckRunDirectory.__module__}.{CheckRunDirectory.__name__}")
        if what is None:
            return
        if not flag(config, "overwrite"):
            refuse(f"hydra.sweep.dir={sweep_dir} {what}. {ways_out('hydra.sweep.dir', sweep_dir, 'sweep')}")
        moved = move(sweep_dir, "hydra.sweep.dir")
        print(f"vitlab: overwrite=true: the old contents of {sweep_dir} were moved to {moved}", file=sys.stderr)


def claim_problem(run_dir: Path, task: str, overrides: list[str]) -> str | None:
    """Why `task` may not write into `run_dir` (one paragraph), or None when it may."""
    from vitlab.cli.in_place import another_experiment
    from vitlab.runs.files import results_status
    from vitlab.runs.ownership import foreign_contents, ways_out
    from vitlab.runs.state import MAY_CHANGE_ON_RESUME, RunState, same_experiment

    if not run_dir.is_dir():
        return None
    if results_status(run_dir) == "ok":
        return (
            f"hydra.run.dir={run_dir} holds a finished run (results.json says ok); nothing of it is overwritten. "
            "Start a new run (another hydra.run.dir), one warm-started from it with ckpt_path=<its "
            "checkpoints/last.ckpt>, or add overwrite=true to move its contents aside to "
            f"{run_dir.name}.replaced-<time>/ next to it (nothing is deleted)."
        )
    what = foreign_contents(run_dir, task)
    if what is not None:
        return f"hydra.run.dir={run_dir} {what}. {ways_out('hydra.run.dir', run_dir, task)}"
    state = RunState.read(run_dir) if task == "train" else None
    if state is not None and not same_experiment(state.overrides, overrides, MAY_CHANGE_ON_RESUME):
        return another_experiment(run_dir, state.overrides, overrides)
    return None


def check_last_checkpoint(run_dir: Path, given: str, fallback: bool) -> None:
    """Refuse to continue a run whose last.ckpt cannot be read, unless `fallback` (taken in `open_attempt`)."""
    from vitlab.runs.checkpoint_choice import continue_refusal, damaged_last
    from vitlab.runs.state import RunState

    if fallback or RunState.read(run_dir) is None:
        return
    damage = damaged_last(run_dir)
    if damage is not None:
        refuse(continue_refusal(damage, given, run_dir))


def move(run_dir: Path, key: str) -> Path:
    """`move_aside`, or one paragraph when the file system does not allow it (nothing is deleted either way)."""
    from vitlab.runs.ownership import move_aside

    if Path.cwd().resolve().is_relative_to(run_dir.resolve()):  # `hydra.run.dir=.`: never the user's own folder
        refuse(
            f"overwrite=true: {key}={run_dir} is the directory vitlab was started in, or holds it; its contents are "
            "not moved. Choose a run directory of its own (or leave it unset for a new dated one)."
        )
    try:
        return move_aside(run_dir)
    except OSError as exc:
        refuse(
            f"overwrite=true: the contents of {key}={run_dir} could not be moved aside ({exc.strerror or exc}); "
            "nothing was deleted. Choose another directory, or move them yourself."
        )


def refuse(message: str) -> NoReturn:
    """One paragraph on stderr and exit 2: a Hydra callback's exceptions become warnings, SystemExit does not."""
    print(f"\nvitlab: error: {message}\n", file=sys.stderr)
    raise SystemExit(2)
