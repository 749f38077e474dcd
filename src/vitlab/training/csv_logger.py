"""A CSV logger that continues the `metrics.csv` of the run it resumes, instead of deleting it.

Lightning's `CSVLogger` deletes an existing `metrics.csv` when it starts. A run continued in place (a
requeued job, `resume=<run dir>`) must keep what earlier attempts logged, up to the step its checkpoint was
written at: rows at or after that step were logged by work the resumed attempt does again, and are dropped.
"""

from __future__ import annotations

import csv
import os
from typing import Any

from pytorch_lightning.loggers import CSVLogger
from pytorch_lightning.loggers.csv_logs import ExperimentWriter
from pytorch_lightning.loggers.logger import rank_zero_experiment


class _AppendingWriter(ExperimentWriter):
    def __init__(self, log_dir: str, keep_before_step: int) -> None:
        self._keep_before_step = keep_before_step
        super().__init__(log_dir)

    def _check_log_dir_exists(self) -> None:  # called by the base __init__ instead of deleting the file
        if not self._fs.isfile(self.metrics_file_path):
            return
        with self._fs.open(self.metrics_file_path, "r", newline="") as file:
            reader = csv.DictReader(file)
            header = list(reader.fieldnames or [])
            rows = [row for row in reader if _step(row) < self._keep_before_step]
        with self._fs.open(self.metrics_file_path, "w", newline="") as file:
            writer = csv.DictWriter(file, fieldnames=header)
            writer.writeheader()
            writer.writerows(rows)
        self.metrics_keys = sorted(header)


def _step(row: dict[str, str]) -> float:
    try:
        return float(row.get("step") or 0)
    except ValueError:
        return 0.0


class ResumableCSVLogger(CSVLogger):
    """`CSVLogger` plus `keep_before_step`: null for a new run (Lightning's behaviour), else the global step of
    the checkpoint being resumed: earlier rows are kept and new ones appended (-1 keeps nothing)."""

    def __init__(self, *args: Any, keep_before_step: int | None = None, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.keep_before_step = keep_before_step

    @property
    @rank_zero_experiment
    def experiment(self) -> ExperimentWriter:
        if self._experiment is not None:
            return self._experiment
        if self.keep_before_step is None:
            return super().experiment
        self._fs.makedirs(self.root_dir, exist_ok=True)
        os.makedirs(self.log_dir, exist_ok=True)
        self._experiment = _AppendingWriter(self.log_dir, self.keep_before_step)
        return self._experiment
