"""A CSV logger that continues the `metrics.csv` of the run it resumes, and never leaves half a row.

Lightning's `CSVLogger` deletes an existing `metrics.csv` when it starts. A run continued in place (a
requeued job, `resume=<run dir>`) must keep what earlier attempts logged, up to the step its checkpoint was
written at: rows at or after that step were logged by work the resumed attempt does again, and are dropped.

`metrics.csv` is an append-only log, so "never half-written" means: each flush appends whole rows or nothing
(`vitlab.runs.files.append_whole` cuts a failed append back to the rows before it), and a rewrite (a new
column, the rows kept on resume) replaces the file atomically. After a full disk the file holds every row
flushed before the failure; `hparams.yaml` is replaced whole too.
"""

from __future__ import annotations

import csv
import io
import os
from pathlib import Path
from typing import Any

from pytorch_lightning.core.saving import save_hparams_to_yaml
from pytorch_lightning.loggers import CSVLogger
from pytorch_lightning.loggers.csv_logs import ExperimentWriter
from pytorch_lightning.loggers.logger import rank_zero_experiment

from vitlab.errors import WriteFailed
from vitlab.runs.files import append_whole, atomic_open, discard, fsync_replace, tmp_name


class _AppendingWriter(ExperimentWriter):
    """Lightning's writer with whole-row appends and atomic rewrites; `keep_before_step` as in the logger."""

    def __init__(self, log_dir: str, keep_before_step: int | None) -> None:
        self._keep_before_step = keep_before_step
        super().__init__(log_dir)

    def _check_log_dir_exists(self) -> None:  # called by the base __init__ instead of deleting the file
        if self._keep_before_step is None:  # a new run: Lightning's behaviour (an old metrics.csv is removed)
            super()._check_log_dir_exists()
            return
        if not os.path.isfile(self.metrics_file_path):
            return
        header, rows = _read(self.metrics_file_path)
        self._rewrite(header, [row for row in rows if _step(row) < self._keep_before_step])
        self.metrics_keys = sorted(header)

    def log_hparams(self, params: dict[str, Any]) -> None:
        self.hparams.update(params)
        path = Path(self.log_dir) / self.NAME_HPARAMS_FILE
        tmp = tmp_name(path)
        try:  # Lightning's YAML writer takes a path: write it beside, then rename
            save_hparams_to_yaml(tmp, self.hparams)
            fsync_replace(tmp, path)
        except OSError as exc:
            discard(tmp)
            raise WriteFailed(path, exc) from exc

    def save(self) -> None:
        """Flush the logged rows: appended whole, or the file rewritten atomically when the columns change."""
        if not self.metrics:
            return
        new_keys = self._record_new_keys()
        if new_keys or not os.path.isfile(self.metrics_file_path):
            old = _read(self.metrics_file_path)[1] if os.path.isfile(self.metrics_file_path) else []
            self._rewrite(self.metrics_keys, [*old, *self.metrics])
        else:
            text = io.StringIO(newline="")
            csv.DictWriter(text, fieldnames=self.metrics_keys).writerows(self.metrics)
            append_whole(self.metrics_file_path, text.getvalue())
        self.metrics = []

    def _rewrite(self, header: list[str], rows: list[dict[str, Any]]) -> None:
        with atomic_open(self.metrics_file_path, "w", newline="") as file:
            writer = csv.DictWriter(file, fieldnames=header)
            writer.writeheader()
            writer.writerows(rows)


def _read(path: str) -> tuple[list[str], list[dict[str, str]]]:
    with open(path, newline="") as file:
        reader = csv.DictReader(file)
        return list(reader.fieldnames or []), list(reader)


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
        self._fs.makedirs(self.root_dir, exist_ok=True)
        os.makedirs(self.log_dir, exist_ok=True)
        self._experiment = _AppendingWriter(self.log_dir, self.keep_before_step)
        return self._experiment
