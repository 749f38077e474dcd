"""Many jobs, one study (`hydra.sweeper.workers`, hydra_plugins.vitlab_optuna.worker): workers that share a journal
file pull exactly the target's trials between them, none twice, and a later command continues the study; a trial
whose run raises is FAIL, not left RUNNING; bad settings are one paragraph and exit 2 with nothing on disk. The
same on a real SLURM: tests/test_slurm.py.
"""

from __future__ import annotations

import threading
import time
from pathlib import Path
from typing import Any

import optuna
import pytest
from optuna.distributions import FloatDistribution

from conftest import TINY, run_cli
from hydra_plugins.vitlab_optuna import study
from hydra_plugins.vitlab_optuna.worker import ask_lock_path, work
from vitlab.errors import ConfigError

SPACE = {"x": FloatDistribution(0.0, 1.0)}


class SlowCount:
    """A worker's study whose count of trials takes a while: without the lock around count and ask, two workers
    that both count the last free trial would both ask for it (the race the lock closes, made wide)."""

    def __init__(self, inner: Any) -> None:
        self.inner = inner

    def get_trials(self, **kwargs: Any) -> Any:
        trials = self.inner.get_trials(**kwargs)
        time.sleep(0.03)
        return trials

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)


def run_workers(journal: Path, n_workers: int, n_trials: int) -> dict[int, list[int]]:
    """`n_workers` threads, each with its own storage (as a process of its own would have), pulling trials whose
    run is a short sleep; {worker: trial numbers it ran}."""
    storage = str(journal)
    start = len(optuna.load_study(study_name="s", storage=study.open_storage(storage)).trials)
    lock = ask_lock_path(storage, journal.parent)
    ran: dict[int, list[int]] = {}

    def worker(index: int) -> None:
        the_study = optuna.load_study(study_name="s", storage=study.open_storage(storage))

        def run(trial: Any) -> tuple[Any, float]:
            time.sleep(0.02)
            return optuna.trial.TrialState.COMPLETE, trial.params["x"]

        ran[index] = work(SlowCount(the_study), SPACE, start + n_trials, lock, run)

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(n_workers)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    return ran


def test_workers_on_one_journal_run_exactly_the_target_none_twice_and_a_later_command_adds_n_trials(tmp_path) -> None:
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    journal = tmp_path / "optuna" / "s.journal"
    optuna.create_study(study_name="s", storage=study.open_storage(str(journal)))
    first = run_workers(journal, n_workers=3, n_trials=7)
    numbers = sorted(n for ran in first.values() for n in ran)
    assert numbers == list(range(7)), first  # each trial once, 7 in all: none lost, none twice, no overshoot
    assert sum(1 for ran in first.values() if ran) >= 2, first  # the work was shared
    second = run_workers(journal, n_workers=2, n_trials=3)  # the same command again: 3 more
    assert sorted(n for ran in second.values() for n in ran) == [7, 8, 9], second
    trials = optuna.load_study(study_name="s", storage=study.open_storage(str(journal))).trials
    assert [t.state.name for t in trials] == ["COMPLETE"] * 10


def test_a_trial_whose_run_raises_is_told_fail_and_the_worker_stops(tmp_path) -> None:
    journal = str(tmp_path / "s.journal")
    the_study = optuna.create_study(study_name="s", storage=study.open_storage(journal))

    def run(trial: Any) -> tuple[Any, float]:
        raise SystemExit(130)  # e.g. an interrupt: the process ends, its trial must not stay RUNNING

    with pytest.raises(SystemExit):
        work(the_study, SPACE, 3, ask_lock_path(journal, tmp_path), run)
    assert [t.state.name for t in the_study.trials] == ["FAIL"]


def test_the_lock_lies_beside_the_study_or_in_the_sweep_directory_for_a_server(tmp_path) -> None:
    assert ask_lock_path(str(tmp_path / "s.journal"), tmp_path / "sw") == tmp_path / "s.journal.ask.lock"
    assert ask_lock_path(f"sqlite:///{tmp_path}/s.db", tmp_path / "sw") == tmp_path / "s.db.ask.lock"
    assert ask_lock_path("postgresql://h/db", tmp_path / "sw") == tmp_path / "sw" / "optuna.ask.lock"


@pytest.mark.parametrize("workers", [0, -1, "two", 2.5, True])
def test_workers_must_be_a_whole_number_of_at_least_one(workers) -> None:
    with pytest.raises(ConfigError, match=r"hydra.sweeper.workers=.*at least 1.*or null"):
        study.check_workers(workers, "x.journal")


def test_workers_refuse_an_in_memory_study() -> None:
    with pytest.raises(ConfigError, match=r"hydra.sweeper.storage=sqlite:///:memory: is an in-memory.*Allowed"):
        study.check_workers(2, "sqlite:///:memory:")
    study.check_workers(None, "sqlite:///:memory:")  # without workers: the batch search, as before
    study.check_workers(2, "sqlite:///s.db")


def test_bad_workers_on_the_command_line_is_one_paragraph_exit_2_and_nothing_on_disk(tmp_path) -> None:
    run = run_cli("train", ["hparams_search=optuna", "hydra.sweeper.workers=0", *TINY], tmp_path)
    assert run.returncode == 2, run.stderr[-2000:]
    assert "hydra.sweeper.workers=0" in run.stderr and "Traceback" not in run.stderr
    assert not tmp_path.exists() or not any(tmp_path.iterdir())


SHORT = ["+trainer.limit_train_batches=3", "+trainer.limit_val_batches=2", "+trainer.limit_test_batches=1"]


def test_two_workers_of_the_basic_launcher_run_n_trials_in_trial_folders_and_continue(tmp_path) -> None:
    """The wiring (sweeper -> launcher -> Worker -> vitlab-train's task function) in this process's launcher: the
    workers run one after the other here, so the first runs every trial; SLURM runs them side by side."""
    sweep = tmp_path / "sweep"
    args = ["-m", "hparams_search=optuna", "hydra.sweeper.workers=2", "hydra.sweeper.n_trials=2", *TINY, *SHORT]
    args += ["hydra.sweeper.study_name=w", f"hydra.sweep.dir={sweep}"]
    for total in (2, 4):
        run = run_cli("train", args, tmp_path)
        assert run.returncode == 0, run.stderr[-3000:]
        assert sorted(p.name for p in sweep.glob("trial_*")) == [f"trial_{n}" for n in range(total)]
        assert all((sweep / f"trial_{n}" / "results.json").is_file() for n in range(total))
    assert not (sweep / "worker_0" / ".hydra").exists()  # vitlab-sweep status lists the trials, not the workers
    trials = optuna.load_study(study_name="w", storage=study.open_storage(str(tmp_path / "optuna" / "w.journal")))
    assert [t.state.name for t in trials.trials] == ["COMPLETE"] * 4
