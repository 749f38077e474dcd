"""scripts/summarize_runs.py: rows over seeds, hyper-parameters chosen on validation, VTAB-1k means."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest

from conftest import ROOT
from vitlab.data.vtab_tasks import REFERENCE_ROWS


@pytest.fixture(scope="module")
def summarize_runs():
    spec = importlib.util.spec_from_file_location("summarize_runs", ROOT / "scripts" / "summarize_runs.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def write_run(root: Path, name: str, overrides: list[str], **metrics) -> None:
    (root / name).mkdir(parents=True)
    record = {"status": "ok", "overrides": overrides, "params/total": 1000, "params/trainable_no_head": 24, **metrics}
    (root / name / "results.json").write_text(json.dumps(record))


def test_select_chooses_the_value_with_the_best_validation_mean_not_the_best_test(tmp_path, summarize_runs) -> None:
    for seed in (0, 1):
        # lr 1e-2: better on val, worse on test; the row must report it anyway (no selection on test)
        write_run(
            tmp_path,
            f"a{seed}",
            [f"seed={seed}", "model/peft=ssf", "optim.lr=1e-2"],
            **{"val/acc": 0.9, "test/acc": 0.7 + seed / 10},
        )
        write_run(
            tmp_path,
            f"b{seed}",
            [f"seed={seed}", "model/peft=ssf", "optim.lr=1e-3"],
            **{"val/acc": 0.8, "test/acc": 0.95},
        )
    table = summarize_runs.summarize(tmp_path, "test/acc", select="optim.lr")
    row = next(line for line in table.splitlines() if "model/peft=ssf" in line)
    assert "| 1e-2 | 0.7500 ± 0.0707 | 2 | 24 | 1,000 |" in row


def test_vtab_rows_give_group_and_flat_means(tmp_path, summarize_runs) -> None:
    for task, acc in REFERENCE_ROWS["ssf"].by_task().items():
        write_run(tmp_path, task, [f"data.task={task}", "model/peft=ssf"], **{"test/acc": acc / 100})
    table = summarize_runs.summarize_vtab(tmp_path, "test/acc")
    row = next(line for line in table.splitlines() if "model/peft=ssf" in line)
    assert "| 19/19 | 81.57 | 86.55 | 58.96 | 75.69 | 73.10 |" in row  # docs/papers/ode.md, SSF
