"""`VitlabOptunaSweeper`: Hydra's sweeper interface on Optuna's ask-and-tell API.

Each batch of `n_jobs` trials is asked for (`study.ask(distributions)`), launched through Hydra's launcher --
the basic one, or the SLURM launcher, whose jobs run elsewhere -- and told back: the job's metric (COMPLETE), a
run stopped by the pruner (PRUNED: vitlab.training.optuna_pruning), anything else (FAIL). The study lives in
its storage, not in this process: the same command run again continues it, with `n_trials` more (docs/reproduce.md).
With `hydra.sweeper.workers=N` the launcher gets N worker jobs once instead, each pulling trials until the study
holds `n_trials` more than at the start (vitlab_optuna.worker, docs/reproduce.md#many-jobs-one-study).
Settings and search space are checked before the storage is opened (vitlab_optuna.study, vitlab_optuna.space);
a bad one is one paragraph and exit status 2. A search in which no trial has completed ends in one paragraph and
exit status 1, naming the study and where the trials' errors are.
"""

from __future__ import annotations

import logging
import sys
from collections import Counter
from pathlib import Path
from typing import Any, NoReturn

from hydra.core.plugins import Plugins
from hydra.core.utils import JobStatus
from hydra.plugins.sweeper import Sweeper
from hydra.types import HydraContext, TaskFunction
from omegaconf import DictConfig, OmegaConf

from hydra_plugins.vitlab_optuna import space, study
from hydra_plugins.vitlab_optuna.worker import (  # noqa: F401  (ENV_OVERRIDE, outcome: this module's names before)
    ENV_OVERRIDE,
    Search,
    Worker,
    ask_lock_path,
    outcome,
    trial_overrides,
    worker_overrides,
)
from vitlab.errors import ConfigError

log = logging.getLogger(__name__)


class VitlabOptunaSweeper(Sweeper):
    def __init__(self, **settings: Any) -> None:
        self.settings = OmegaConf.create(settings)
        self.config: DictConfig | None = None
        self.launcher: Any = None
        self.job_idx = 0

    def setup(self, *, hydra_context: HydraContext, task_function: TaskFunction, config: DictConfig) -> None:
        self.config, self.hydra_context, self.task_function = config, hydra_context, task_function
        self.launcher = Plugins.instance().instantiate_launcher(
            config=config, hydra_context=hydra_context, task_function=task_function
        )
        self.sweep_dir = Path(str(config.hydra.sweep.dir))

    def sweep(self, arguments: list[str]) -> None:
        import optuna

        settings = self.settings
        try:
            study.check_settings(settings)
            specs = [(f"{key}={value}", "hydra.sweeper.params") for key, value in (settings.params or {}).items()]
            distributions, fixed = space.parse_space([*specs, *((a, "the command line") for a in arguments)])
            grid = space.grid(distributions) if settings.sampler.name == "grid" else None
        except ConfigError as exc:
            _stop(str(exc), 2)
        _say_where_an_old_study_is(str(settings.storage))
        storage = study.open_storage(str(settings.storage))
        the_study = optuna.create_study(
            study_name=str(settings.study_name),
            storage=storage,
            sampler=study.make_sampler(settings.sampler, grid),
            direction=str(settings.direction),
            load_if_exists=True,
        )
        n_trials = int(settings.n_trials)
        if grid is not None:  # the grid's points not yet tried, at most
            left = len(list(_product(grid))) - len(the_study.trials)
            n_trials = min(n_trials, max(left, 0))
        log.info(
            "Optuna study %s in %s (%d trials so far): %d more, sampler %s, pruner %s",
            settings.study_name, settings.storage, len(the_study.trials), n_trials,
            settings.sampler.name, settings.pruner.name,
        )  # fmt: skip
        job = {
            "storage": str(settings.storage),
            "study": str(settings.study_name),
            "pruner": study.pruner_spec(settings.pruner),
            "monitor": str(OmegaConf.select(self.config, "optimised_metric", default="val/acc")),
        }
        if settings.get("workers") is not None:
            start, lock = len(the_study.trials), ask_lock_path(str(settings.storage), self.sweep_dir)
            search = Search(
                storage=str(settings.storage), study_name=str(settings.study_name),
                start=start, target=start + n_trials, lock=str(lock),
                distributions=distributions, fixed=fixed, job=job,
                sampler=OmegaConf.to_container(settings.sampler, resolve=True), grid=grid,
            )  # fmt: skip
            self._launch_workers(search, min(int(settings.workers), n_trials))
            n_trials = 0
        while n_trials > 0:
            batch = min(n_trials, int(settings.n_jobs))
            trials = [the_study.ask(distributions) for _ in range(batch)]
            overrides = [trial_overrides(trial, fixed, job) for trial in trials]
            returns = self.launcher.launch(overrides, initial_job_idx=self.job_idx)
            self.job_idx += len(returns)
            for trial, ret in zip(trials, returns, strict=True):
                state, value = outcome(ret)
                the_study.tell(trial, value, state=state)
                log.info("trial %d: %s%s", trial.number, state.name, "" if value is None else f" {value:g}")
            n_trials -= batch
        self._finish(the_study)

    def _launch_workers(self, search: Search, workers: int) -> None:
        """`workers` jobs launched once, each a `Worker` pulling trials until the study holds `search.target`
        (vitlab_optuna.worker). A worker job that failed is named; its trials are in the study either way."""
        if workers < 1:
            return
        launcher = Plugins.instance().instantiate_launcher(
            config=self.config,
            hydra_context=self.hydra_context,
            task_function=Worker(search, self.hydra_context, self.config, self.task_function),
        )
        log.info("%d workers pull trials from the study until it holds %d", workers, search.target)
        fixed = [f"{key}={value}" for key, value in search.fixed.items()]
        returns = launcher.launch([[*fixed, *worker_overrides(i)] for i in range(workers)], initial_job_idx=0)
        for i, ret in enumerate(returns):
            if ret.status != JobStatus.COMPLETED:
                log.warning("worker %d ended early: %s", i, ret._return_value)

    def _finish(self, the_study: Any) -> None:
        import optuna

        states = Counter(trial.state.name for trial in the_study.trials)
        if not states[optuna.trial.TrialState.COMPLETE.name]:
            counts = ", ".join(f"{n} {state}" for state, n in sorted(states.items()))
            _stop(
                f"no trial of the Optuna study {the_study.study_name} completed ({counts} of "
                f"{len(the_study.trials)} trials), so it has no best value. Each failed or pruned trial's reason is "
                f"in its run directory's results.json under {self.sweep_dir}; the study is kept in "
                f"{self.settings.storage} and continues when the same command runs again.",
                1,
            )
        best = the_study.best_trial
        log.info("best trial %d: %s %g with %s", best.number, self.settings.direction, best.value, best.params)
        self.sweep_dir.mkdir(parents=True, exist_ok=True)
        results = {"name": "optuna", "study": the_study.study_name, "best_trial": best.number}
        results.update(best_params=dict(best.params), best_value=best.value, trials=dict(states))
        OmegaConf.save(OmegaConf.create(results), self.sweep_dir / "optimization_results.yaml")


def _say_where_an_old_study_is(storage: str) -> None:
    """A study of hydra-optuna-sweeper (SQLite, `<study>.db`) beside a journal file not yet made: say how to go on
    with it rather than start a new study without a word (docs/reproduce.md)."""
    path = study.storage_file(storage)
    if path is None or "://" in storage or path.exists() or not path.with_suffix(".db").is_file():
        return
    log.warning(
        "%s holds this study as vitlab kept it before Optuna 4 (SQLite); this search starts a new study in %s. To "
        "continue the old one instead: optuna storage upgrade --storage sqlite:///%s, then hydra.sweeper.storage="
        "sqlite:///%s",
        path.with_suffix(".db"), path, path.with_suffix(".db"), path.with_suffix(".db"),
    )  # fmt: skip


def _product(grid: dict[str, list[Any]]) -> Any:
    import itertools

    return itertools.product(*grid.values())


def _stop(message: str, code: int) -> NoReturn:
    print(f"\nvitlab: error: {message}\n", file=sys.stderr)
    raise SystemExit(code)
