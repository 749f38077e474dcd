"""Many jobs, one study: `hydra.sweeper.workers=N` (docs/reproduce.md#many-jobs-one-study, docs/clusters.md).

Without it the sweeper asks for a batch of `n_jobs` trials, launches them and waits for the whole batch, so a
search is as wide as one batch and the slowest trial holds up the rest. With it the sweeper launches N jobs once,
through the configured launcher (on SLURM: N jobs, possibly on different nodes), and each job is a `Worker` that
pulls trials from the study until the search's `target` (the study's trials when the command started, plus
`n_trials`) have been started: it asks, runs the trial's training in its own run directory
(`<sweep dir>/trial_<number>`) in the worker's process, and tells the result. Counting and asking happen under an
exclusive `flock` on a file beside the study (`ask_lock_path`), so two workers never both take the last trial.

A worker killed mid-trial (`scancel`, a node lost) leaves that trial RUNNING in the study: Optuna's journal
storage keeps no heartbeat (only its RDB storage does), so nothing marks it FAIL; it counts towards the target
and the samplers treat it as a trial still under way (docs/reproduce.md#many-jobs-one-study: how it shows, how to
close it).
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import logging
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

log = logging.getLogger(__name__)

ENV_OVERRIDE = "++hydra.job.env_set.VITLAB_OPTUNA_TRIAL"  # vitlab.training.optuna_pruning.ENV
LOCK_SUFFIX = ".ask.lock"  # not Optuna's own `<journal>.lock`


def ask_lock_path(storage: str, sweep_dir: Path) -> Path:
    """The lock file the workers ask under: beside the journal file or SQLite database (every command that
    continues the study finds the same one), in the sweep directory for a database server."""
    from hydra_plugins.vitlab_optuna.study import storage_file

    path = storage_file(storage)
    return Path(f"{path}{LOCK_SUFFIX}") if path is not None else sweep_dir / f"optuna{LOCK_SUFFIX}"


@contextlib.contextmanager
def exclusive(path: Path) -> Iterator[None]:
    """An exclusive `flock` on `path` (made if missing): one holder at a time across threads, processes and nodes
    of a file system whose flock works across nodes (as Optuna's journal file backend needs too)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("a") as handle:
        fcntl.flock(handle.fileno(), fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle.fileno(), fcntl.LOCK_UN)


def work(
    the_study: Any, distributions: dict[str, Any], target: int, lock: Path, run: Callable[[Any], Any]
) -> list[int]:
    """Pull trials from `the_study` until it holds `target` trials (any state: one started elsewhere counts);
    `run(trial)` gives (state, value), which is told. The numbers of the trials this worker ran.

    The count and the ask share one lock, so N workers together create exactly `target` trials. A trial whose run
    raises (an interrupt's SystemExit included) is told FAIL before the exception goes on: only a killed process
    leaves a trial RUNNING."""
    import optuna

    ran: list[int] = []
    while True:
        with exclusive(lock):
            if len(the_study.get_trials(deepcopy=False)) >= target:
                return ran
            trial = the_study.ask(distributions)
        try:
            state, value = run(trial)
        except BaseException:
            the_study.tell(trial, state=optuna.trial.TrialState.FAIL)
            raise
        the_study.tell(trial, value, state=state)
        ran.append(trial.number)
        log.info("trial %d: %s%s", trial.number, state.name, "" if value is None else f" {value:g}")


def trial_overrides(trial: Any, fixed: dict[str, str], job: dict[str, Any]) -> list[str]:
    """A trial's job overrides: its sampled values, the command line's fixed ones, and the env var through which
    its run finds the trial for pruning (vitlab.training.optuna_pruning)."""
    sampled = [f"{key}={_override_value(value)}" for key, value in trial.params.items()]
    env = json.dumps({**job, "trial": trial.number}).replace("\\", "\\\\").replace("'", "\\'")
    return [*sampled, *(f"{key}={value}" for key, value in fixed.items()), f"{ENV_OVERRIDE}='{env}'"]


def outcome(ret: Any) -> tuple[Any, float | None]:
    """(Optuna's state, value) of a finished job: its metric, a run the pruner stopped, or a failure."""
    import optuna
    from hydra.core.utils import JobStatus

    from vitlab.training.optuna_pruning import Pruned

    State = optuna.trial.TrialState
    if ret.status != JobStatus.COMPLETED:
        return State.FAIL, None
    value = ret.return_value
    if isinstance(value, Pruned):
        return State.PRUNED, None
    try:
        number = float(value)
    except (TypeError, ValueError):
        return State.FAIL, None  # a failed run returns no metric (vitlab.cli.train.train_job)
    return (State.COMPLETE, number) if number == number else (State.FAIL, None)  # NaN: no value to learn from


@dataclass
class Search:
    """What every worker of one command needs, pickled into each job (plain values and Optuna distributions)."""

    storage: str
    study_name: str
    start: int  # the study's trials when the command started
    target: int  # start + n_trials
    lock: str
    distributions: dict[str, Any]
    fixed: dict[str, str]
    job: dict[str, Any]  # the pruning env var's fields: storage, study, pruner, monitor
    sampler: dict[str, Any]  # hydra.sweeper.sampler
    grid: dict[str, list[Any]] | None


class Worker:
    """The task function of a worker job: `work` on the study, each trial run as Hydra runs a job (its config
    composed from the command's config and the trial's overrides, its callbacks, its `env_set`) by `task_function`
    -- vitlab-train's own, so a trial is recorded exactly as in a batch search."""

    def __init__(self, search: Search, hydra_context: Any, config: DictConfig, task_function: Callable) -> None:
        self.search, self.hydra_context, self.config, self.task_function = search, hydra_context, config, task_function

    def __call__(self, cfg: DictConfig) -> dict[str, Any]:
        import optuna
        from hydra.core.hydra_config import HydraConfig

        from hydra_plugins.vitlab_optuna import study

        index = int(HydraConfig.get().job.num) if HydraConfig.initialized() else 0
        sampler = OmegaConf.create(self.search.sampler)
        if sampler.get("seed") is not None:  # one seed for all would sample the same points in each worker and
            sampler.seed = int(sampler.seed) + 1000 * self.search.start + index  # in each command continuing it
        the_study = optuna.load_study(
            study_name=self.search.study_name,
            storage=study.open_storage(self.search.storage),
            sampler=study.make_sampler(sampler, self.search.grid),
        )
        s = self.search
        ran = work(the_study, s.distributions, s.target, Path(s.lock), self._run)
        log.info("worker %d ran trials %s", index, ran)
        return {"worker": index, "trials": ran}

    def _run(self, trial: Any) -> tuple[Any, float | None]:
        from hydra.core.hydra_config import HydraConfig
        from hydra.core.utils import run_job
        from omegaconf import open_dict

        outer = HydraConfig.get() if HydraConfig.initialized() else None
        overrides = [*trial_overrides(trial, self.search.fixed, self.search.job), trial_subdir(trial.number)]
        config = self.hydra_context.config_loader.load_sweep_config(self.config, overrides)
        with open_dict(config.hydra.job):
            config.hydra.job.id = f"{outer.job.id if outer is not None else 'worker'}_trial_{trial.number}"
            config.hydra.job.num = trial.number
        ret = run_job(
            hydra_context=self.hydra_context,
            task_function=self.task_function,
            config=config,
            job_dir_key="hydra.sweep.dir",
            job_subdir_key="hydra.sweep.subdir",
        )
        return outcome(ret)


def trial_subdir(number: int) -> str:
    """A trial's run directory under the sweep directory: named by its number in the study, unique across
    workers and across commands that continue the study in the same sweep directory."""
    return f"hydra.sweep.subdir=trial_{number}"


def worker_overrides(index: int) -> list[str]:
    """A worker job's own directory: its log only. No `.hydra/` in it, so `vitlab-sweep status` (which lists the
    folders with results.json, run.json or .hydra/overrides.yaml) shows the trials, not the workers."""
    return [f"hydra.sweep.subdir=worker_{index}", "hydra.output_subdir=null"]


def _override_value(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return str(value).lower()
    return str(value)
