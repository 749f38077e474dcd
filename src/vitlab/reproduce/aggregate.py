"""Read a table's `results.json` files back into cells: mean ± std over seeds, the paper's number, the
difference, and cost columns. A cell is never filled in: no run is `missing`, only failed runs is `failed`,
some seeds missing or failed is `partial` (the mean is over the seeds that finished).

Accuracies in results.json are fractions; cells are in the table's units (`TableSpec.unit_factor`), the
units the paper prints, so `diff` = ours − paper is in the paper's units. VTAB-1k tables get both averaging
conventions (docs/papers/ode.md#averaging-conventions): the mean of the three group means and the flat mean over tasks.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from vitlab.data.vtab_tasks import vtab_means
from vitlab.reproduce.convergence import run_late_gain
from vitlab.reproduce.jobs import Job
from vitlab.reproduce.spec import MACS_KEYS, PARAMS_KEYS, RowSpec, TableSpec
from vitlab.runs.files import read_results

CellStatus = Literal["ok", "partial", "failed", "missing", "not_implemented"]
COST_KEYS = (*PARAMS_KEYS, *MACS_KEYS, "cost/peak_mem_mb", "cost/train_img_per_s")
LATE_GAIN = "val/late_gain"  # the rise of val/acc over the last quarter of epochs (reproduce/convergence.py)


@dataclass
class Cell:
    """One row x column entry, in the table's units."""

    column: str
    kind: Literal["dataset", "summary"]
    status: CellStatus
    mean: float | None = None
    std: float | None = None  # sample std over seeds; None with fewer than two
    n_ok: int = 0  # seeds (data set cells) or data sets (summary cells) that finished
    n_failed: int = 0
    n_expected: int = 0
    error: str | None = None  # the first failure's message
    paper: float | None = None
    diff: float | None = None  # mean − paper, only where both cover the same data
    paper_subset: bool = False  # the paper's summary recomputed over the same data sets as ours
    selected: str | None = None  # the grid point chosen on the selection metric, e.g. "optim.lr=0.01"
    seed_values: dict[int, float] = field(default_factory=dict, repr=False)
    data_sha256: str | None = None  # the finished runs' `data/sha256`, distinct values space-separated (docs/runs.md)


@dataclass
class RowResult:
    """A row of the table: its cells (data sets, then summary columns) and cost means over its runs."""

    row: RowSpec
    scale: str
    cells: dict[str, Cell]
    cost: dict[str, float | None]

    @property
    def name(self) -> str:
        return self.row.name

    @property
    def label(self) -> str:
        return self.row.label


def _metric(record: Mapping[str, Any], key: str) -> float | None:
    value = record.get(key)
    return float(value) if isinstance(value, int | float) and math.isfinite(value) else None


def _mean_std(values: Sequence[float]) -> tuple[float | None, float | None]:
    if not values:
        return None, None
    return statistics.mean(values), statistics.stdev(values) if len(values) > 1 else None


Runs = dict[tuple, list[tuple[Job, dict | None]]]  # grid point -> (job, its results.json or None)


def _dataset_cell(spec: TableSpec, row: RowSpec, column: str, runs: Runs) -> tuple[Cell, list[dict]]:
    """Choose the grid point (best mean `select_metric`), then summarise its seeds."""

    def ok_runs(point: tuple) -> list[tuple[Job, dict]]:
        return [(j, r) for j, r in runs[point] if r and r.get("status") == "ok" and _metric(r, spec.metric) is not None]

    def score(point: tuple) -> tuple[int, float]:
        values = [v for _, r in ok_runs(point) if (v := _metric(r, spec.select_metric)) is not None]
        return (1, statistics.mean(values)) if values else (0, float(len(ok_runs(point))))

    point = max(runs, key=score)  # dicts keep insertion order: ties go to the first grid point
    ok, attempted = ok_runs(point), [(j, r) for j, r in runs[point] if r is not None]
    if not ok:  # nothing finished at any point: report every failure
        attempted = [(j, r) for p in runs for j, r in runs[p] if r is not None]
    failed = [(j, r) for j, r in attempted if (j, r) not in ok]
    errors = [r.get("error") or f"results.json has no {spec.metric}" for _, r in failed]
    values = {j.seed: _metric(r, spec.metric) * spec.unit_factor for j, r in ok}
    mean, std = _mean_std(list(values.values()))
    status: CellStatus = "missing" if not attempted else ("failed" if not ok else "ok")
    if status == "ok" and len(ok) < len(runs[point]):
        status = "partial"
    cell = Cell(
        column, "dataset", status, mean, std, len(ok), len(failed), len(runs[point]), errors[0] if errors else None
    )
    cell.paper = row.paper.get(column)
    cell.diff = mean - cell.paper if mean is not None and cell.paper is not None else None
    if len(runs) > 1:  # a grid: say which point the selection metric chose
        cell.selected = " ".join(f"{k}={v}" for k, v in point)
    cell.seed_values = values
    hashes = dict.fromkeys(str(r["data/sha256"]) for _, r in ok if r.get("data/sha256"))  # first-seen order
    cell.data_sha256 = " ".join(hashes) or None  # two values: the seeds read different data
    return cell, [r for _, r in ok]


def _summary_fn(spec: TableSpec) -> Callable[[dict[str, float]], dict[str, float]]:
    if spec.summary == "vtab":
        return lambda acc: vtab_means(acc, partial=True)
    return lambda acc: {"mean": statistics.mean(acc.values())}


def _summary_cells(spec: TableSpec, row: RowSpec, scale: str, cells: dict[str, Cell]) -> dict[str, Cell]:
    """Summary columns over the data sets present; std over seeds that every one of them finished."""
    if not spec.summary_columns:
        return {}
    fn, names = _summary_fn(spec), [d.name for d in spec.datasets_at(scale)]
    present = {n: cells[n].mean for n in names if cells[n].mean is not None}
    ours = fn(present) if present else {}
    per_seed = [
        fn({n: cells[n].seed_values[s] for n in present})
        for s in spec.scale(scale).seeds
        if present and all(s in cells[n].seed_values for n in present)
    ]
    table_names = [d.name for d in spec.datasets]
    paper_over = present if present else {n: 0.0 for n in table_names}
    paper_tasks = {n: row.paper[n] for n in paper_over if n in row.paper}
    complete = len(present) == len(names) == len(table_names)
    out = {}
    for col in spec.summary_columns:
        mean = ours.get(col)
        mean = None if mean is None or math.isnan(mean) else mean
        std = _mean_std([p[col] for p in per_seed if not math.isnan(p[col])])[1] if len(per_seed) > 1 else None
        status: CellStatus = "missing" if not present else ("ok" if len(present) == len(names) else "partial")
        if mean is None and present:
            status = "partial"  # e.g. a VTAB group without any finished task
        cell = Cell(col, "summary", status, mean, std, len(present), 0, len(names))
        if paper_tasks and len(paper_tasks) == len(paper_over):  # per-data-set numbers: same data as ours
            value = fn(paper_tasks).get(col)
            cell.paper = None if value is None or math.isnan(value) else value
            cell.paper_subset = set(paper_over) != set(table_names)
            comparable = bool(present)
        else:  # only the paper's own summary (e.g. BitFit's means): comparable when we have every data set
            cell.paper, comparable = row.paper.get(col), complete
        if comparable and mean is not None and cell.paper is not None:
            cell.diff = mean - cell.paper
        out[col] = cell
    return out


def collect(spec: TableSpec, scale: str, table_dir: Path | str) -> list[RowResult]:
    """Per row and data set: mean, std, n ok / failed (first error), paper number and difference; summary
    columns; cost means (params, MACs per image under `spec.macs_key`, peak memory, training images/s) and
    the mean late rise of val/acc (`LATE_GAIN`: did the row converge)."""
    runs: dict[tuple[str, str], Runs] = {}
    for job in spec.jobs(scale):
        record = read_results(job.run_dir(table_dir))
        runs.setdefault((job.row, job.dataset or ""), {}).setdefault(job.grid, []).append((job, record))
    results = []
    for row in spec.rows:
        cells: dict[str, Cell] = {}
        records: list[dict] = []
        for dataset in spec.datasets_at(scale):
            if row.needs:
                cells[dataset.name] = Cell(
                    dataset.name, "dataset", "not_implemented", paper=row.paper.get(dataset.name)
                )
                continue
            cells[dataset.name], ok = _dataset_cell(spec, row, dataset.name, runs[(row.name, dataset.name)])
            records += ok
        if row.needs:
            summary = {c: Cell(c, "summary", "not_implemented", paper=row.paper.get(c)) for c in spec.summary_columns}
        else:
            summary = _summary_cells(spec, row, scale, cells)
        cost = {}
        for key in COST_KEYS:
            values = [v for r in records if (v := _metric(r, key)) is not None]
            cost[key] = statistics.mean(values) if values else None
        gains = [g for r in records if r.get("run_dir") and (g := run_late_gain(r["run_dir"])) is not None]
        cost[LATE_GAIN] = statistics.mean(gains) if gains else None
        results.append(RowResult(row, scale, {**cells, **summary}, cost))
    return results
