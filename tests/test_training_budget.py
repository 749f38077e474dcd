"""A run that cannot train is refused before it starts; a warm-up longer than the run is said in one line."""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import pytest
from omegaconf import open_dict

import vitlab.cli.train as train_cli
from conftest import TINY
from vitlab.cli.runner import run_task
from vitlab.compose import compose_config
from vitlab.errors import ConfigError
from vitlab.training.budget import check_training_budget
from vitlab.training.components import build_datamodule, build_trainer


def _cfg(tmp_path: Path, *extra: str) -> Any:
    cfg = compose_config("train", [*TINY, f"paths.log_dir={tmp_path}", *extra])
    with open_dict(cfg):
        cfg.paths.output_dir = str(tmp_path / "run")
    return cfg


def test_a_run_that_allows_no_training_batch_is_refused_and_recorded_failed(tmp_path, monkeypatch, capsys) -> None:
    """Before: status ok, epochs 0, no checkpoint, and the untrained model's test accuracy printed as the result."""
    monkeypatch.setenv("WANDB_MODE", "disabled")
    cfg = _cfg(tmp_path, "+trainer.limit_train_batches=0")
    with pytest.raises(SystemExit) as stop:
        run_task(cfg, train_cli.train)
    assert stop.value.code == 2
    record = json.loads((tmp_path / "run" / "results.json").read_text())
    assert record["status"] == "failed" and "no optimiser step" in record["error"], record
    assert "trainer.limit_train_batches=0" in record["error"] and record.get("test/acc") is None
    assert not list((tmp_path / "run").rglob("*.ckpt"))
    assert "test/acc =" not in capsys.readouterr().out


@pytest.mark.parametrize("max_steps", [None, 5])
def test_the_budget_counts_the_runs_optimiser_steps(tmp_path, max_steps: int | None) -> None:
    """Two epochs of the training loader's batches, or `trainer.max_steps` when that is fewer."""
    extra = ["trainer.max_epochs=2", *([f"+trainer.max_steps={max_steps}"] if max_steps else [])]
    cfg = _cfg(tmp_path, *extra, "scheduler.warmup_epochs=0")
    datamodule, trainer = build_datamodule(cfg), build_trainer(cfg)
    per_epoch = datamodule.train_batches_per_epoch()
    assert per_epoch > 5  # so that max_steps=5 is the shorter budget
    expected = 2 * per_epoch if max_steps is None else max_steps
    assert check_training_budget(trainer, datamodule, cfg.scheduler, 1e-3) == expected


def test_a_warm_up_the_run_cannot_finish_is_one_line_with_the_numbers(tmp_path, caplog) -> None:
    cfg = _cfg(tmp_path, "trainer.max_epochs=2", "scheduler.warmup_epochs=4", "scheduler.warmup_lr=0")
    datamodule, trainer = build_datamodule(cfg), build_trainer(cfg)
    per_epoch = datamodule.train_batches_per_epoch()
    with caplog.at_level(logging.WARNING, logger="vitlab"):
        steps = check_training_budget(trainer, datamodule, cfg.scheduler, 1e-3)
    (line,) = [r.getMessage() for r in caplog.records if "warmup_epochs" in r.getMessage()]
    assert steps == 2 * per_epoch
    assert f"scheduler.warmup_epochs=4 is {4 * per_epoch} optimiser steps and this run makes {steps}" in line
    assert f"its last update uses {1e-3 * (steps - 1) / (4 * per_epoch):.3g} (optim.lr=0.001 is never reached)" in line
    caplog.clear()
    cfg = _cfg(tmp_path, "trainer.max_epochs=5", "scheduler.warmup_epochs=4")
    with caplog.at_level(logging.WARNING, logger="vitlab"):
        check_training_budget(build_trainer(cfg), build_datamodule(cfg), cfg.scheduler, 1e-3)
    assert not [r for r in caplog.records if "warmup_epochs" in r.getMessage()]


def test_an_empty_validation_split_is_refused(tmp_path) -> None:
    class NoValidation:
        def train_batches_per_epoch(self) -> int:
            return 3

        def split_sizes(self) -> dict[str, int]:
            return {"train": 192, "val": 0, "test": 50}

    cfg = _cfg(tmp_path)
    with pytest.raises(ConfigError, match=r"the validation split is empty .*val/acc"):
        check_training_budget(build_trainer(cfg), NoValidation(), None, 1e-3)
