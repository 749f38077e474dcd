"""Did a run converge? How much its validation accuracy still rose at the end of training.

A table built from a short schedule can rank methods by how fast they start rather than where they end. So
every table reports, per row, the mean rise of `val/acc` from the third to the last quarter of the epochs
(mean over each quarter's epochs, then over the row's runs), read from each run's `csv/metrics.csv`. A row
whose accuracy still rose by `STILL_RISING` or more is marked as not converged: more epochs would likely move
its number. It is a check of the learning curve, not a proof: a row can also plateau below its optimum.
"""

from __future__ import annotations

import csv
import math
import statistics
from pathlib import Path

STILL_RISING = 0.01  # one point of accuracy (two of the digits tables' 180 validation images)
MIN_EPOCHS = 4  # fewer epochs have no quarters to compare


def val_curve(run_dir: Path | str, metric: str = "val/acc") -> list[float]:
    """`metric` at the end of each epoch, in epoch order, from the run's CSV log (empty when there is none).
    A run continued in place logs an epoch again after its restart: the last value of each epoch counts."""
    path = Path(run_dir) / "csv" / "metrics.csv"
    if not path.is_file():
        return []
    by_epoch: dict[int, float] = {}
    with open(path, newline="") as fh:
        for record in csv.DictReader(fh):
            value, epoch = record.get(metric) or "", record.get("epoch") or ""
            if value and epoch:
                by_epoch[int(float(epoch))] = float(value)
    return [by_epoch[e] for e in sorted(by_epoch)]


def late_gain(curve: list[float]) -> float | None:
    """Mean of the last quarter of `curve` minus the mean of the quarter before it; None when too short."""
    if len(curve) < MIN_EPOCHS or not all(math.isfinite(v) for v in curve):
        return None
    q = len(curve) // 4
    return statistics.mean(curve[-q:]) - statistics.mean(curve[-2 * q : -q])


def run_late_gain(run_dir: Path | str) -> float | None:
    return late_gain(val_curve(run_dir))


def converged_text(gain: float | None, unit_factor: float = 100.0) -> str:
    """`yes (+0.3)` / `no (+4.2)` in the table's units, `–` without a curve."""
    if gain is None:
        return "–"
    return f"{'no' if gain >= STILL_RISING else 'yes'} ({gain * unit_factor:+.1f})"
