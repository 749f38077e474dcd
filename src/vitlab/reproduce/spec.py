"""What a table definition says, as frozen dataclasses; `TableSpec.jobs` expands it into runnable jobs.

Paper numbers are kept in the units the paper prints (percent for accuracy). Our `results.json`
accuracies are fractions and are converted on aggregation (`TableSpec.unit_factor`), so the difference
to the paper is in the paper's units. Reading and validating the YAML is `vitlab.reproduce.table`'s job.
"""

from __future__ import annotations

import itertools
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from vitlab.errors import ConfigError
from vitlab.reproduce.jobs import Job, grid_dir

SCALES = ("smoke", "mini", "full")
VTAB_COLUMNS = ("natural", "specialized", "structured", "group_mean", "flat_mean")
SUMMARIES: dict[str, tuple[str, ...]] = {"none": (), "mean": ("mean",), "vtab": VTAB_COLUMNS}
UNITS = {"percent": 100.0, "fraction": 1.0}
PARAMS_KEYS = ("params/trainable_no_head", "params/trainable", "params/total")
MACS_KEYS = ("cost/macs_per_image", "cost/macs_no_attn_per_image")
PLOT_X = (*PARAMS_KEYS, "cost/peak_mem_mb", *MACS_KEYS, "cost/train_img_per_s")


@dataclass(frozen=True)
class DatasetSpec:
    """One data set column; `at_scale` replaces `overrides` at a scale (e.g. digits instead of CIFAR at smoke)."""

    name: str
    label: str
    overrides: tuple[str, ...]
    at_scale: Mapping[str, tuple[str, ...]] = field(default_factory=dict)


@dataclass(frozen=True)
class ScaleSpec:
    """Budget of one scale: seeds, overrides for every job, optionally a subset of data sets, replacement
    data set overrides (`dataset_overrides`) and whether rows sweep their `grid` (else their own value)."""

    name: str
    seeds: tuple[int, ...]
    overrides: tuple[str, ...] = ()
    datasets: tuple[str, ...] | None = None
    dataset_overrides: tuple[str, ...] | None = None
    grid: bool = True


@dataclass(frozen=True)
class PrepareSpec:
    """A job run once before the rows (e.g. pre-training); done when `produces` (relative to the table
    directory) exists. It gets the scale's overrides, so a smoke-sized backbone is pre-trained at smoke."""

    name: str
    overrides: tuple[str, ...]
    produces: str
    at_scale: Mapping[str, tuple[str, ...]] = field(default_factory=dict)
    seed: int = 0


@dataclass(frozen=True)
class RowSpec:
    """One method. `paper` maps data set or summary column -> the paper's number (paper units); `needs`
    marks a row whose capability vitlab lacks: it gets no jobs and renders as "not implemented"."""

    name: str
    label: str
    overrides: tuple[str, ...] = ()
    at_dataset: Mapping[str, tuple[str, ...]] = field(default_factory=dict)
    grid: tuple[tuple[str, tuple[str, ...]], ...] = ()
    paper: Mapping[str, float] = field(default_factory=dict)
    reference: str | None = None
    params_paper: float | None = None
    macs_paper: float | None = None
    note: str | None = None
    needs: str | None = None


@dataclass(frozen=True)
class PlotSpec:
    x: str
    y: str


@dataclass(frozen=True)
class TableSpec:
    """A validated table definition; `jobs(scale)` expands it into runnable jobs."""

    paper: str
    table: str
    title: str
    source: str
    metric: str
    units: str
    select_metric: str
    macs_key: str
    params_paper_key: str
    paper_label: str
    summary: str
    mini_table: str | None
    notes: tuple[str, ...]
    overrides: tuple[str, ...]
    datasets: tuple[DatasetSpec, ...]
    scales: Mapping[str, ScaleSpec]
    prepare: tuple[PrepareSpec, ...]
    rows: tuple[RowSpec, ...]
    plot: PlotSpec
    path: Path | None = None

    @property
    def key(self) -> str:
        return f"{self.paper}/{self.table}"

    @property
    def unit_factor(self) -> float:
        """Multiplier from results.json values (fractions) to the table's units."""
        return UNITS[self.units]

    @property
    def summary_columns(self) -> tuple[str, ...]:
        return SUMMARIES[self.summary]

    def scale(self, name: str) -> ScaleSpec:
        """The budget of scale `name`; the error names the defined scales, or the table standing in at mini."""
        if name in self.scales:
            return self.scales[name]
        if name == "mini" and self.mini_table:
            raise ConfigError(
                f"scale=mini: table {self.key} has no CPU-sized version of its own; its mini-study is "
                f"table={self.mini_table} (paper={self.paper} table={self.mini_table} scale=mini)."
            )
        raise ConfigError(f"scale={name!r} is not defined for table {self.key}; allowed: {', '.join(self.scales)}.")

    def datasets_at(self, scale: str) -> list[DatasetSpec]:
        names = self.scale(scale).datasets
        return [d for d in self.datasets if names is None or d.name in names]

    def dataset_overrides(self, dataset: DatasetSpec, scale: str) -> tuple[str, ...]:
        if scale in dataset.at_scale:
            return dataset.at_scale[scale]
        replaced = self.scale(scale).dataset_overrides
        return dataset.overrides if replaced is None else replaced

    def jobs(self, scale: str, extra: Sequence[str] = ()) -> list[Job]:
        """Rows x data sets x grid points x seeds; overrides in the order common, data set, row, row at that
        data set, grid point, scale, `seed=k`, `extra` (later wins, so the scale's budget beats a row's)."""
        return expand_jobs(self, self.scale(scale), extra)

    def prepare_jobs(self, scale: str, extra: Sequence[str] = ()) -> list[Job]:
        """The `prepare` steps at this scale: their own overrides, the scale's, their `at_scale` ones."""
        sc = self.scale(scale)
        return [
            Job(
                id=f"_prepare/{p.name}",
                row=p.name,
                dataset=None,
                seed=p.seed,
                overrides=(*p.overrides, *sc.overrides, *p.at_scale.get(scale, ()), f"seed={p.seed}", *extra),
                produces=p.produces,
                extra=tuple(extra),
            )
            for p in self.prepare
        ]


def expand_jobs(spec: TableSpec, scale: ScaleSpec, extra: Sequence[str] = ()) -> list[Job]:
    """See `TableSpec.jobs`. Rows with `needs` get no jobs."""
    jobs = []
    for row in spec.rows:
        if row.needs:
            continue
        keys = [k for k, _ in row.grid] if scale.grid else []
        points = list(itertools.product(*(vs for _, vs in row.grid))) if scale.grid and row.grid else [()]
        for dataset in spec.datasets_at(scale.name):
            for values in points:
                point = tuple(zip(keys, values, strict=True))
                for seed in scale.seeds:
                    parts = [row.name, dataset.name, *([grid_dir(point)] if point else []), f"seed{seed}"]
                    overrides = (
                        *spec.overrides,
                        *spec.dataset_overrides(dataset, scale.name),
                        *row.overrides,
                        *row.at_dataset.get(dataset.name, ()),
                        *(f"{k}={v}" for k, v in point),
                        *scale.overrides,
                        f"seed={seed}",
                        *extra,
                    )
                    jobs.append(
                        Job("/".join(parts), row.name, dataset.name, seed, overrides, point, extra=tuple(extra))
                    )
    return jobs
