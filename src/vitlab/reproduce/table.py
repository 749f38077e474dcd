"""Table definitions (`configs/paper/<paper>/<table>.yaml`): reading, validation, lookup.

A definition is plain data, read once and checked strictly: an unknown or mistyped key is a `ConfigError`
naming the file, the key and what is allowed, because otherwise a typo in a table silently drops a row or
a paper number. The schema is documented by the dataclasses in `vitlab.reproduce.spec` and the
definitions under `configs/paper/`.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import yaml

from vitlab.data.vtab_tasks import REFERENCE_ROWS, TASKS
from vitlab.errors import ConfigError
from vitlab.reproduce.jobs import Job, pending_jobs
from vitlab.reproduce.spec import (
    MACS_KEYS,
    PARAMS_KEYS,
    PLOT_X,
    SCALES,
    SUMMARIES,
    UNITS,
    DatasetSpec,
    PlotSpec,
    PrepareSpec,
    RowSpec,
    ScaleSpec,
    TableSpec,
)

__all__ = [
    "SCALES",
    "DatasetSpec",
    "Job",
    "RowSpec",
    "ScaleSpec",
    "TableSpec",
    "find_table",
    "list_tables",
    "load_table",
    "pending_jobs",
    "resolve_table",
    "table_dir",
]

NAME = re.compile(r"^[a-z0-9][a-z0-9_]*$")  # rows and data sets name directories: keep them path-safe
TOP_KEYS = ["paper", "table", "title", "source", "metric", "units", "select_metric", "macs_key",
            "params_paper_key", "paper_label", "summary", "mini_table", "notes", "overrides", "datasets",
            "scales", "prepare", "rows", "plot"]  # fmt: skip
ROW_KEYS = ["name", "label", "overrides", "at_dataset", "grid", "paper", "reference", "params_paper",
            "macs_paper", "note", "needs"]  # fmt: skip
DATASET_KEYS = ["name", "label", "overrides", "at_scale"]
SCALE_KEYS = ["seeds", "overrides", "datasets", "dataset_overrides", "grid"]
PREPARE_KEYS = ["name", "overrides", "produces", "at_scale", "seed"]


class _Where:
    """Checks one mapping of the file; every message starts with the file and the key path."""

    def __init__(self, path: Path | str, key: str = "") -> None:
        self.path, self.key = path, key

    def at(self, key: str | int) -> _Where:
        sub = f"[{key}]" if isinstance(key, int) else (f"{self.key}.{key}" if self.key else key)
        return _Where(self.path, self.key + sub if isinstance(key, int) else sub)

    def fail(self, message: str) -> ConfigError:
        return ConfigError(f"{self.path}: {self.key or 'the file'} {message}")

    def mapping(self, value: Any, allowed: Sequence[str], required: Sequence[str] = ()) -> dict[str, Any]:
        if not isinstance(value, dict):
            raise self.fail(f"must be a mapping with keys {', '.join(allowed)}; got {value!r}.")
        unknown = sorted(set(value) - set(allowed))
        if unknown:
            raise self.at(unknown[0]).fail(f"is not a known key; allowed here: {', '.join(allowed)}.")
        missing = [k for k in required if value.get(k) in (None, "", [])]
        if missing:
            raise self.at(missing[0]).fail(f"is required (keys here: {', '.join(allowed)}).")
        return value

    def text(self, value: Any, default: str | None = None, choices: Sequence[str] = ()) -> str | None:
        if value is None:
            return default
        if not isinstance(value, str) or (choices and value not in choices):
            allowed = f"one of {', '.join(choices)}" if choices else "a string"
            raise self.fail(f"must be {allowed}; got {value!r}.")
        return value

    def name(self, value: Any) -> str:
        if not isinstance(value, str) or not NAME.match(value):
            raise self.fail(f"must be a lower-case name of letters, digits and _ (a directory name); got {value!r}.")
        return value

    def strings(self, value: Any) -> tuple[str, ...]:
        if value is None:
            return ()
        if not isinstance(value, list) or not all(isinstance(v, str) and v for v in value):
            raise self.fail(
                f"must be a list of override strings (e.g. [model/peft=lora, optim.lr=1e-3]); got {value!r}."
            )
        return tuple(value)

    def number(self, value: Any) -> float | None:
        if value is None:
            return None
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise self.fail(f"must be a number or null; got {value!r}.")
        return float(value)

    def by_name(self, value: Any, allowed: Sequence[str]) -> dict[str, tuple[str, ...]]:
        if value is None:
            return {}
        self.mapping(value, allowed)
        return {k: self.at(k).strings(v) for k, v in value.items()}


def _row(where: _Where, raw: Any, spec: dict[str, Any], datasets: Sequence[str]) -> RowSpec:
    where.mapping(raw, ROW_KEYS, required=("name",))
    columns = (*datasets, *SUMMARIES[spec["summary"]])
    paper = raw.get("paper")
    if isinstance(paper, dict):
        where.at("paper").mapping(paper, columns)
        values = {k: where.at("paper").at(k).number(v) for k, v in paper.items()}
    elif paper is None:
        values = {}
    elif len(datasets) == 1:
        values = {datasets[0]: where.at("paper").number(paper)}
    else:
        raise where.at("paper").fail(f"must be a mapping {{column: number}} (columns: {', '.join(columns)}) or null.")
    reference = where.at("reference").text(raw.get("reference"), choices=[f"vtab1k/{k}" for k in REFERENCE_ROWS])
    params = where.at("params_paper").number(raw.get("params_paper"))
    if reference is not None:  # per-task numbers of docs/papers/ode.md, typed once in vitlab.data.vtab_tasks
        if spec["summary"] != "vtab":
            raise where.at("reference").fail("needs summary: vtab (a VTAB-1k table).")
        ref = REFERENCE_ROWS[reference.split("/", 1)[1]]
        values = {**ref.by_task(), **{k: v for k, v in values.items() if v is not None}}
        params = params if params is not None else ref.params_m * 1e6
    grid = raw.get("grid") or {}
    if not isinstance(grid, dict) or not all(isinstance(v, list) and v for v in grid.values()):
        raise where.at("grid").fail(f"must map an override key to a non-empty list of values; got {grid!r}.")
    return RowSpec(
        name=where.at("name").name(raw["name"]),
        label=where.at("label").text(raw.get("label"), default=raw["name"]) or raw["name"],
        overrides=where.at("overrides").strings(raw.get("overrides")),
        at_dataset=where.at("at_dataset").by_name(raw.get("at_dataset"), datasets),
        grid=tuple((str(k), tuple(str(v) for v in vs)) for k, vs in grid.items()),
        paper={k: v for k, v in values.items() if v is not None},
        reference=reference,
        params_paper=params,
        macs_paper=where.at("macs_paper").number(raw.get("macs_paper")),
        note=where.at("note").text(raw.get("note")),
        needs=where.at("needs").text(raw.get("needs")),
    )


def _scale(where: _Where, name: str, raw: Any, datasets: Sequence[str]) -> ScaleSpec:
    where.mapping(raw, SCALE_KEYS, required=("seeds",))
    seeds = raw["seeds"]
    if not isinstance(seeds, list) or not all(isinstance(s, int) and not isinstance(s, bool) for s in seeds):
        raise where.at("seeds").fail(f"must be a non-empty list of integers; got {seeds!r}.")
    subset = raw.get("datasets")
    if subset is not None and (not isinstance(subset, list) or not set(subset) <= set(datasets) or not subset):
        raise where.at("datasets").fail(f"must be a non-empty list of data set names from: {', '.join(datasets)}.")
    replaced = raw.get("dataset_overrides")
    return ScaleSpec(
        name=name,
        seeds=tuple(seeds),
        overrides=where.at("overrides").strings(raw.get("overrides")),
        datasets=tuple(subset) if subset is not None else None,
        dataset_overrides=where.at("dataset_overrides").strings(replaced) if replaced is not None else None,
        grid=bool(raw.get("grid", True)),
    )


def load_table(path: Path | str) -> TableSpec:
    """Read and validate one table definition; every problem is a `ConfigError` naming the key."""
    path = Path(path)
    try:
        raw = yaml.safe_load(path.read_text())
    except (OSError, yaml.YAMLError) as exc:
        raise ConfigError(f"{path}: cannot read the table definition ({exc}).") from exc
    top = _Where(path)
    top.mapping(raw, TOP_KEYS, required=("paper", "table", "title", "source", "datasets", "scales", "rows"))
    spec: dict[str, Any] = {"summary": top.at("summary").text(raw.get("summary"), "none", tuple(SUMMARIES))}
    if (raw["paper"], raw["table"]) != (path.parent.name, path.stem):
        raise top.at("table").fail(
            f"paper/table say {raw['paper']}/{raw['table']}; the file says {path.parent.name}/{path.stem}."
        )
    datasets = []
    for i, d in enumerate(_list(top.at("datasets"), raw["datasets"])):
        w = top.at("datasets").at(i)
        w.mapping(d, DATASET_KEYS, required=("name",))
        name = w.at("name").name(d["name"])
        at_scale = w.at("at_scale").by_name(d.get("at_scale"), SCALES)
        datasets.append(
            DatasetSpec(name, d.get("label") or name, w.at("overrides").strings(d.get("overrides")), at_scale)
        )
    names = [d.name for d in datasets]
    if summary_is_vtab := spec["summary"] == "vtab":
        unknown = sorted(set(names) - set(TASKS))
        if unknown:
            raise top.at("datasets").fail(f"of a vtab table must be VTAB-1k tasks; unknown: {', '.join(unknown)}.")
    top.at("scales").mapping(raw["scales"], SCALES)
    scales = {s: _scale(top.at("scales").at(s), s, v, names) for s, v in raw["scales"].items()}
    rows = tuple(_row(top.at("rows").at(i), r, spec, names) for i, r in enumerate(_list(top.at("rows"), raw["rows"])))
    for label, items in (("datasets", names), ("rows", [r.name for r in rows])):
        if len(set(items)) != len(items):
            raise top.at(label).fail(f"names must be unique; got {', '.join(items)}.")
    prepare = []
    for i, p in enumerate(_list(top.at("prepare"), raw.get("prepare") or [], empty=True)):
        w = top.at("prepare").at(i)
        w.mapping(p, PREPARE_KEYS, required=("name", "produces"))
        if Path(p["produces"]).is_absolute() or ".." in Path(p["produces"]).parts:
            raise w.at("produces").fail(f"must be a path inside the table directory; got {p['produces']!r}.")
        seed = int(p.get("seed", 0))
        prepare.append(
            PrepareSpec(
                w.at("name").name(p["name"]),
                w.at("overrides").strings(p.get("overrides")),
                p["produces"],
                w.at("at_scale").by_name(p.get("at_scale"), SCALES),
                seed,
            )
        )
    metric = top.at("metric").text(raw.get("metric"), "test/acc")
    select = top.at("select_metric").text(raw.get("select_metric"), "val/acc")
    if select == metric:
        raise top.at("select_metric").fail(f"must differ from metric ({metric}): choose on validation, report on test.")
    plot = raw.get("plot") or {}
    top.at("plot").mapping(plot, ("x", "y"))
    y_choices = (*names, *SUMMARIES[spec["summary"]])
    default_y = "group_mean" if summary_is_vtab else ("mean" if spec["summary"] == "mean" else names[0])
    mini = top.at("mini_table").text(raw.get("mini_table"))
    if mini and "mini" in scales:
        raise top.at("mini_table").fail("cannot be set together with scales.mini: one of them defines scale=mini.")
    return TableSpec(
        paper=top.at("paper").name(raw["paper"]),
        table=top.at("table").name(raw["table"]),
        title=top.at("title").text(raw["title"]) or "",
        source=top.at("source").text(raw["source"]) or "",
        metric=metric or "test/acc",
        units=top.at("units").text(raw.get("units"), "percent", tuple(UNITS)) or "percent",
        select_metric=select or "val/acc",
        macs_key=top.at("macs_key").text(raw.get("macs_key"), MACS_KEYS[0], MACS_KEYS) or MACS_KEYS[0],
        params_paper_key=top.at("params_paper_key").text(raw.get("params_paper_key"), "params/total", PARAMS_KEYS)
        or "params/total",
        paper_label=top.at("paper_label").text(raw.get("paper_label"), "paper") or "paper",
        summary=spec["summary"],
        mini_table=mini,
        notes=top.at("notes").strings(raw.get("notes")),
        overrides=top.at("overrides").strings(raw.get("overrides")),
        datasets=tuple(datasets),
        scales=scales,
        prepare=tuple(prepare),
        rows=rows,
        plot=PlotSpec(
            x=top.at("plot").at("x").text(plot.get("x"), PLOT_X[0], PLOT_X) or PLOT_X[0],
            y=top.at("plot").at("y").text(plot.get("y"), default_y, y_choices) or default_y,
        ),
        path=path,
    )


def _list(where: _Where, value: Any, empty: bool = False) -> list[Any]:
    if not isinstance(value, list) or (not value and not empty):
        raise where.fail(f"must be a{'' if empty else ' non-empty'} list; got {value!r}.")
    return value


# ----------------------------------------------------------------------------------------------- lookup
def list_tables(config_root: Path | str) -> dict[str, list[str]]:
    """paper -> its table names, from `<config_root>/paper/<paper>/<table>.yaml`."""
    root = Path(config_root) / "paper"
    papers = sorted(p for p in root.iterdir() if p.is_dir()) if root.is_dir() else []
    return {p.name: sorted(t.stem for t in p.glob("*.yaml")) for p in papers}


def find_table(config_root: Path | str, paper: str, table: str) -> Path:
    """The definition file of `paper`/`table`; a `ConfigError` lists what exists when it does not."""
    available = list_tables(config_root)
    if paper not in available:
        raise ConfigError(f"paper={paper!r} has no table definitions; allowed: {', '.join(available) or '(none)'}.")
    if table not in available[paper]:
        raise ConfigError(f"table={table!r} is not a table of paper={paper}; allowed: {', '.join(available[paper])}.")
    return Path(config_root) / "paper" / paper / f"{table}.yaml"


def resolve_table(config_root: Path | str, paper: str, table: str, scale: str) -> TableSpec:
    """The table to run for `scale`: the named one, or its `mini_table` at scale=mini (the paper tables'
    CPU versions are separate digits tables). Unknown scales fail here, before anything runs."""
    if scale not in SCALES:
        raise ConfigError(f"scale={scale!r} is not a scale; allowed: {', '.join(SCALES)}.")
    spec = load_table(find_table(config_root, paper, table))
    if scale == "mini" and "mini" not in spec.scales and spec.mini_table:
        spec = load_table(find_table(config_root, paper, spec.mini_table))
    spec.scale(scale)  # raises if the table does not define it
    return spec


def table_dir(log_dir: Path | str, spec: TableSpec, scale: str) -> Path:
    """Where a table's runs live: `<log_dir>/reproduce/<paper>/<table>/<scale>` (scales never mix)."""
    return Path(log_dir) / "reproduce" / spec.paper / spec.table / scale
