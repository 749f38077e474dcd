"""The tables' `Converged` column: the rise of val/acc from the third to the last quarter of the epochs,
read from each run's CSV log (the last value of an epoch counts when a resumed run logged it twice)."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest

from vitlab.reproduce import collect, load_table
from vitlab.reproduce.aggregate import LATE_GAIN
from vitlab.reproduce.convergence import converged_text, late_gain, val_curve
from vitlab.reproduce.render import render_csv, render_markdown


def write_log(run_dir: Path, curve: list[float], repeat_epoch: int | None = None) -> None:
    """A metrics.csv as the CSV logger writes it: step rows without val/acc, one val row per epoch."""
    path = run_dir / "csv" / "metrics.csv"
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=["epoch", "step", "train/loss_step", "val/acc"])
        writer.writeheader()
        for epoch, acc in enumerate(curve):
            writer.writerow({"epoch": epoch, "step": 10 * epoch, "train/loss_step": 1.0, "val/acc": ""})
            if epoch == repeat_epoch:  # logged once before an interrupt, again after the restart
                writer.writerow({"epoch": epoch, "step": 10 * epoch + 9, "val/acc": 0.0})
            writer.writerow({"epoch": epoch, "step": 10 * epoch + 9, "val/acc": acc})


def test_the_curve_is_one_value_per_epoch_the_last_logged(tmp_path: Path) -> None:
    write_log(tmp_path, [0.1, 0.2, 0.3], repeat_epoch=1)
    assert val_curve(tmp_path) == [0.1, 0.2, 0.3]
    assert val_curve(tmp_path / "no_log") == []


def test_late_gain_compares_the_last_two_quarters() -> None:
    curve = [0.1, 0.3, 0.5, 0.6, 0.70, 0.74, 0.80, 0.82]  # quarters of 2 epochs: 0.72 -> 0.81
    assert late_gain(curve) == pytest.approx(0.09)
    assert late_gain([0.9] * 20) == 0.0 and late_gain([0.5, 0.9, 0.8]) is None  # too short to have quarters
    assert late_gain([0.1, 0.2, float("nan"), 0.3, 0.4]) is None
    assert converged_text(0.09) == "no (+9.0)" and converged_text(0.004) == "yes (+0.4)"
    assert converged_text(-0.02) == "yes (-2.0)" and converged_text(None) == "–"


TABLE = """
paper: demo
table: conv
title: Convergence
source: made up for the test
datasets: [{name: a, label: Set A, overrides: []}]
scales: {mini: {seeds: [0, 1]}}
rows:
  - {name: rising, label: Rising, overrides: []}
  - {name: flat, label: Flat, overrides: [optim.lr=0.1]}
  - {name: unlogged, label: No CSV, overrides: [optim.lr=0.2]}
"""


def test_tables_report_whether_each_row_converged(tmp_path: Path) -> None:
    path = tmp_path / "demo" / "conv.yaml"
    path.parent.mkdir(parents=True)
    path.write_text(TABLE)
    spec, runs = load_table(path), tmp_path / "runs"
    curves = {"rising": [0.2, 0.4, 0.6, 0.8], "flat": [0.5, 0.9, 0.9, 0.905]}
    for job in spec.jobs("mini"):
        run_dir = job.run_dir(runs)
        if job.row in curves:
            write_log(run_dir, [v + 0.01 * job.seed for v in curves[job.row]])
        run_dir.mkdir(parents=True, exist_ok=True)
        job.results_path(runs).write_text(json.dumps({"status": "ok", "test/acc": 0.8, "run_dir": str(run_dir)}))
    rising, flat, unlogged = collect(spec, "mini", runs)
    assert rising.cost[LATE_GAIN] == pytest.approx(0.2) and flat.cost[LATE_GAIN] == pytest.approx(0.005)
    assert unlogged.cost[LATE_GAIN] is None
    md = render_markdown([rising, flat, unlogged], spec)
    table = [[c.strip() for c in line.strip("|").split(" | ")] for line in md.splitlines() if line.startswith("| ")]
    column = table[0].index("Converged")
    assert {line[0]: line[column] for line in table[1:]} == {
        "Rising": "no (+20.0)", "Flat": "yes (+0.5)", "No CSV": "–"
    }  # fmt: skip
    assert "Converged: `no` when val/acc still rose by 1 point or more" in md
    records = csv.DictReader(render_csv([rising, flat, unlogged], spec).splitlines())
    gains = {r["row"]: r["val_late_gain"] for r in records}
    assert float(gains["rising"]) == pytest.approx(0.2) and gains["unlogged"] == ""
