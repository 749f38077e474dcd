"""Signals, in-process: SIGINT, SIGUSR1 and SIGUSR2 each write last.ckpt at the step they arrive, record
`status: interrupted` and exit with 128 + the signal; a second signal during the checkpoint write changes
nothing; the run then continues in place to the same result as an uninterrupted one."""

from __future__ import annotations

import csv
import json
import signal
from pathlib import Path
from typing import Any

import pytest
import torch
from omegaconf import DictConfig, open_dict

from conftest import TINY, assert_identical
from helpers.signal_at_step import SignalAtStep
from vitlab.cli import train as train_cli
from vitlab.cli.in_place import apply_attempt, open_attempt
from vitlab.cli.runner import run_task
from vitlab.compose import compose_config
from vitlab.training import components
from vitlab.training.checkpointing import LastCheckpoint

pytestmark = pytest.mark.slow  # starts vitlab processes or trains end to end: not in make test-fast

ARGS = [*TINY, "trainer.max_epochs=2", "seed=1"]
BUILD_TRAINER = components.build_trainer  # vitlab-train imports it when a run starts: patch it there


def config(run_dir: Path, args: list[str]) -> DictConfig:
    cfg = compose_config("train", args)
    with open_dict(cfg):
        cfg.paths.output_dir = str(run_dir)  # what Hydra's run directory would be
    return cfg


def run(
    run_dir: Path, monkeypatch: pytest.MonkeyPatch, at: tuple | None = None, args: list[str] = ARGS
) -> dict[str, Any]:
    """One attempt of `vitlab-train` in this process, with a signal (`SignalAtStep(*at)`) if given."""
    build = BUILD_TRAINER
    extra = [SignalAtStep(*at)] if at else []
    monkeypatch.setattr(
        components, "build_trainer", lambda cfg, extra_callbacks=None: build(cfg, [*extra, *(extra_callbacks or [])])
    )
    cfg = config(run_dir, args)
    attempt = open_attempt(run_dir, args)
    apply_attempt(cfg, attempt)
    return run_task(cfg, train_cli.train, attempt)


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGUSR1, signal.SIGUSR2], ids=lambda s: s.name)
def test_a_signal_writes_the_checkpoint_of_its_step_and_stops_non_zero(signum, tmp_path, monkeypatch) -> None:
    before = signal.getsignal(signal.SIGINT)  # default_int_handler; SIG_IGN in a job started in the background
    with pytest.raises(SystemExit) as stop:
        run(tmp_path / "run", monkeypatch, at=(5, signum))
    assert stop.value.code == 128 + signum
    record = json.loads((tmp_path / "run" / "results.json").read_text())
    assert record["status"] == "interrupted" and record["signal"] == signum.name, record
    ckpt = torch.load(tmp_path / "run" / "checkpoints" / "last.ckpt", weights_only=True, mmap=True)
    assert ckpt["global_step"] == 5
    state = json.loads((tmp_path / "run" / "run.json").read_text())
    assert state["attempts"][0]["status"] == "interrupted" and state["attempts"][0]["signal"] == signum.name
    assert signal.getsignal(signal.SIGINT) is before  # restored: pytest's Ctrl+C works again


def test_signals_during_the_checkpoint_write_change_nothing_and_the_run_continues_exactly(
    tmp_path, monkeypatch
) -> None:
    save = LastCheckpoint.save

    def save_under_fire(self: LastCheckpoint, trainer: Any) -> Path:
        signal.raise_signal(signal.SIGTERM)  # a second and a third signal while the checkpoint is written
        signal.raise_signal(signal.SIGINT)
        return save(self, trainer)

    monkeypatch.setattr(LastCheckpoint, "save", save_under_fire)
    with pytest.raises(SystemExit) as stop:
        run(tmp_path / "run", monkeypatch, at=(7, signal.SIGUSR1))
    assert stop.value.code == 128 + signal.SIGUSR1  # the first signal decides
    monkeypatch.setattr(LastCheckpoint, "save", save)

    result = run(tmp_path / "run", monkeypatch)  # the same experiment, continued in place
    assert result["status"] == "ok" and result["resumed"] == 1
    run(tmp_path / "reference", monkeypatch)
    assert_identical(tmp_path / "run", tmp_path / "reference", "SIGUSR1 at step 7, then SIGTERM + SIGINT mid-save")


def interrupted_then_continued(tmp_path: Path, monkeypatch, args: list[str], at: tuple) -> Path:
    """A run stopped by `at`, then continued in place; and the uninterrupted reference, compared bit for bit."""
    with pytest.raises(SystemExit):
        run(tmp_path / "run", monkeypatch, at=at, args=args)
    result = run(tmp_path / "run", monkeypatch, args=args)
    assert result["status"] == "ok" and result["resumed"] == 1
    run(tmp_path / "reference", monkeypatch, args=args)
    assert_identical(tmp_path / "run", tmp_path / "reference", f"{args[len(ARGS) :]}, signal {at}")
    return tmp_path / "run"


def test_a_signal_inside_a_gradient_accumulation_waits_for_the_step(tmp_path, monkeypatch) -> None:
    args = [*ARGS, "trainer.accumulate_grad_batches=2", "callbacks.last_checkpoint.every_n_train_steps=3"]
    run_dir = interrupted_then_continued(tmp_path, monkeypatch, args, at=(9, signal.SIGUSR1, True))  # batch 9 of 2
    ckpt = torch.load(run_dir / "checkpoints" / "last.ckpt", weights_only=True, mmap=True)
    state = json.loads((run_dir / "run.json").read_text())
    assert state["attempts"][1]["resumed_from"]["global_step"] == 5  # batch 10 completed step 5: saved there
    assert ckpt["global_step"] == 2 * 10  # the finished run: 2 epochs of 10 steps (19 batches, the last steps alone)


def test_a_validation_inside_the_epoch_is_not_skipped_by_a_resume(tmp_path, monkeypatch) -> None:
    args = [*ARGS, "+trainer.val_check_interval=0.5"]  # validation after batch 9 and at the epoch's end
    run_dir = interrupted_then_continued(tmp_path, monkeypatch, args, at=(9, signal.SIGUSR1))
    validations = [r for r in csv.DictReader((run_dir / "csv" / "metrics.csv").open()) if r.get("val/loss")]
    reference = [
        r for r in csv.DictReader((tmp_path / "reference" / "csv" / "metrics.csv").open()) if r.get("val/loss")
    ]
    assert [r["val/loss"] for r in validations] == [r["val/loss"] for r in reference] and len(reference) == 4


def test_an_early_stopped_run_interrupted_during_its_test_does_not_train_on(tmp_path, monkeypatch) -> None:
    args = [*ARGS, "trainer.max_epochs=5", "callbacks=early_stopping", "callbacks.early_stopping.patience=0",
            "+callbacks.early_stopping.min_delta=0.5"]  # fmt: skip
    interrupted_then_continued(tmp_path, monkeypatch, args, at=(-1, signal.SIGTERM))
    assert json.loads((tmp_path / "reference" / "results.json").read_text())["epochs"] < 5  # it did stop early
