"""Read what a run directory holds, tolerating every part being absent (docs/report.md#what-it-reads).

A run directory (`vitlab-train`, `vitlab-eval`) has `run.json` and/or `results.json`; everything else is
optional: the config (`config_resolved.yaml`, or Hydra's `.hydra/config.yaml`), the CSV logger's
`csv/metrics.csv`, `weights_report.json` (when weights were loaded), `metrics/test.json` (the test's per-class
results) and the figures under `figures/*.png`, whichever commands and callbacks wrote them.
"""

from __future__ import annotations

import csv
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from vitlab.errors import ConfigError
from vitlab.plots.figures import FIGURES_DIR
from vitlab.runs.files import RESULTS_FILE, read_json, read_results
from vitlab.runs.state import RUN_FILE

CONFIG_FILES = ("config_resolved.yaml", ".hydra/config.yaml")
PNG_START, PNG_END = b"\x89PNG\r\n\x1a\n", b"IEND\xaeB`\x82"


@dataclass
class RunFiles:
    """The readable parts of one run directory (empty where a file is absent or unreadable)."""

    path: Path
    run: dict[str, Any] = field(default_factory=dict)
    results: dict[str, Any] = field(default_factory=dict)
    config: str | None = None
    config_file: str | None = None
    metrics: list[dict[str, float]] = field(default_factory=list)
    weights: dict[str, Any] | None = None
    test: dict[str, Any] | None = None
    figures: dict[str, bytes] = field(default_factory=dict)  # name (no .png) -> a whole PNG file
    skipped_figures: list[str] = field(default_factory=list)  # PNG files that are not whole (no broken images)

    @property
    def name(self) -> str:
        return self.path.name

    def last_attempt(self) -> dict[str, Any]:
        attempts = self.run.get("attempts") or [{}]
        return attempts[-1] if isinstance(attempts[-1], dict) else {}


def check_run_dir(path: Path) -> Path:
    """`path`, resolved, if it is a run directory; else `ConfigError` with one paragraph saying what it is."""
    if not path.exists():
        raise ConfigError(f"{path} does not exist. Give a run directory, e.g. outputs/runs/<date>/<time>_train.")
    if not path.is_dir():
        raise ConfigError(f"{path} is a file, not a run directory. Give the folder that holds its results.json.")
    if (path / RUN_FILE).is_file() or (path / RESULTS_FILE).is_file():
        return path.resolve()
    below = sorted(p.parent for depth in ("*", "*/*", "*/*/*") for p in path.glob(f"{depth}/{RESULTS_FILE}"))[:3]
    hint = (
        f" It holds run directories, e.g. {', '.join(str(p) for p in below)}: give one of them."
        if below
        else " Give a folder like outputs/runs/<date>/<time>_train."
    )
    raise ConfigError(
        f"{path} is not a run directory: it has neither {RUN_FILE} nor {RESULTS_FILE} (what vitlab-train and "
        f"vitlab-eval write into every run).{hint}"
    )


def read_run(path: Path) -> RunFiles:
    """Everything `vitlab-report` shows of the run at `path` (checked with `check_run_dir`)."""
    run = RunFiles(check_run_dir(Path(path)))
    run.run = read_json(run.path / RUN_FILE) or {}
    run.results = read_results(run.path) or {}
    for name in CONFIG_FILES:
        if (run.path / name).is_file():
            run.config, run.config_file = _read_text(run.path / name), name
            break
    run.metrics = read_metrics(run.path)
    run.weights = read_json(run.path / "weights_report.json")
    run.test = read_json(run.path / "metrics" / "test.json")
    for png in sorted((run.path / FIGURES_DIR).glob("*.png")):
        data = png.read_bytes()
        if data.startswith(PNG_START) and data.endswith(PNG_END):
            run.figures[png.stem] = data
        else:
            run.skipped_figures.append(png.name)
    return run


def read_metrics(run_dir: Path) -> list[dict[str, float]]:
    """The rows of the run's `metrics.csv` (CSV logger) with their numeric cells; [] when there is none."""
    files = [run_dir / "csv" / "metrics.csv", *sorted(run_dir.glob("csv/**/metrics.csv"))]
    path = next((p for p in files if p.is_file()), None)
    if path is None:
        return []
    rows = []
    try:
        with path.open(newline="") as f:
            for row in csv.DictReader(f):
                cells = {k: _number(v) for k, v in row.items() if k}
                rows.append({k: v for k, v in cells.items() if v is not None})
    except (OSError, csv.Error, UnicodeDecodeError):
        return rows
    return rows


def _number(text: str | None) -> float | None:
    try:
        value = float(text) if text not in (None, "") else None
    except ValueError:
        return None
    return value if value is not None and math.isfinite(value) else None


def _read_text(path: Path) -> str | None:
    try:
        return path.read_text()
    except (OSError, UnicodeDecodeError):
        return None
