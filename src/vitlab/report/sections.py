"""The report's sections built from one run or two (the second shown beside the first): each returns its body
HTML, or None when neither run has anything for it, so an absent part is left out rather than shown empty."""

from __future__ import annotations

import difflib
from collections.abc import Callable, Sequence
from typing import Any

from vitlab.report.html import details, diff_block, esc, pre, table
from vitlab.report.run_files import RunFiles

PROBE_PREFIXES = ("probe/", "test/probe_", "fewshot/")
CALIBRATION_KEYS = ("test/ece", "test/nll")
COST_KEYS = ("epochs", "wall_s", "world_size", "micro_batch", "accumulate_grad_batches", "optim/implementation")
RESULT_PREFIXES = ("test/", "val/", "train/")
RUN_DIR = "<run dir>"


def labels(runs: Sequence[RunFiles]) -> list[str]:
    """Column names: the run folders' names, with A/B when they are the same."""
    names = [r.name for r in runs]
    return names if len(set(names)) == len(names) else [f"{tag}: {n}" for tag, n in zip("AB", names, strict=False)]


def scalar_table(runs: Sequence[RunFiles], keys: Sequence[str]) -> str:
    """key | run A | (run B | B − A): the keys in the order given."""
    header = ["", *labels(runs)] + (["difference"] if len(runs) == 2 else [])
    rows = []
    for key in keys:
        values = [r.results.get(key) for r in runs]
        row: list[Any] = [key, *[_cell(v) for v in values]]
        if len(runs) == 2:
            a, b = values
            numbers = all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in values)
            row.append(b - a if numbers else None)
        rows.append(row)
    return table(header, rows)


def keys_where(runs: Sequence[RunFiles], keep: Callable[[str, Any], bool]) -> list[str]:
    """Result keys (of any run, first-seen order) that `keep` accepts; a key null in every run is left out (not
    measured: an eval has no training cost, top-5 needs more than 5 classes)."""
    seen: dict[str, None] = {}
    for run in runs:
        for key, value in run.results.items():
            if value is not None and keep(key, value):
                seen.setdefault(key, None)
    return list(seen)


def header(runs: Sequence[RunFiles]) -> str:
    rows: list[tuple[str, Callable[[RunFiles], Any]]] = [
        ("run directory", lambda r: str(r.path)),
        ("status", lambda r: r.results.get("status") or r.last_attempt().get("status") or "no results.json"),
        ("task", lambda r: r.results.get("task")),
        ("created", lambda r: r.run.get("created")),
        ("ended", lambda r: r.last_attempt().get("ended")),
        ("attempts", lambda r: len(r.run.get("attempts") or []) or None),
        ("git commit", _commit),
        ("vitlab version", lambda r: (r.results.get("versions") or {}).get("vitlab")),
        ("versions", lambda r: _versions(r.results.get("versions"))),
        ("device", lambda r: r.results.get("device")),
        ("seed", lambda r: r.results.get("seed")),
        ("overrides", lambda r: " ".join(r.run.get("overrides") or r.results.get("overrides") or []) or None),
        ("data sha256", lambda r: r.results.get("data/sha256")),
        ("error", lambda r: r.results.get("error")),
    ]
    body = [[name, *[_cell(get(r)) for r in runs]] for name, get in rows]
    body = [row for row in body if any(cell is not None for cell in row[1:])]
    return table(["", *labels(runs)], body)


def config(runs: Sequence[RunFiles]) -> str | None:
    if not any(r.config for r in runs):
        return None
    parts = []
    for run, label in zip(runs, labels(runs), strict=True):
        if run.config is None:
            parts.append(f"<p class='muted'>{esc(label)}: no config file.</p>")
            continue
        parts.append(details(f"{label}: {run.config_file}", pre(run.config)))
    if len(runs) == 2 and all(r.config for r in runs):
        a, b = runs
        names = labels(runs)
        # each run's own folder reads <run dir>: the paths under it differ in every pair and say nothing
        lines = [r.config.replace(str(r.path), RUN_DIR).splitlines() for r in (a, b)]
        diff = list(difflib.unified_diff(*lines, names[0], names[1], lineterm=""))
        same = "<p>The two configs are identical (paths inside each run directory aside).</p>"
        parts.insert(0, "<h3>Difference</h3>" + (diff_block(diff) if diff else same))
    return "".join(parts)


def cost(runs: Sequence[RunFiles]) -> str | None:
    keys = keys_where(runs, lambda k, _: k.startswith(("params/", "cost/")) or k in COST_KEYS)
    order = {"params": 0, "cost": 1}
    keys.sort(key=lambda k: (order.get(k.split("/")[0], 2), COST_KEYS.index(k) if k in COST_KEYS else 0))
    return scalar_table(runs, keys) if keys else None


def results(runs: Sequence[RunFiles]) -> str | None:
    def keep(key: str, value: Any) -> bool:
        taken = key.startswith(PROBE_PREFIXES) or key in CALIBRATION_KEYS
        return key.startswith(RESULT_PREFIXES) and not taken and isinstance(value, (int, float, type(None)))

    keys = keys_where(runs, keep)
    return scalar_table(runs, keys) if keys else None


def probes(runs: Sequence[RunFiles]) -> str | None:
    keys = keys_where(runs, lambda k, _: k.startswith(PROBE_PREFIXES))
    return scalar_table(runs, keys) if keys else None


def calibration_numbers(runs: Sequence[RunFiles]) -> str | None:
    keys = keys_where(runs, lambda k, _: k in CALIBRATION_KEYS)
    return scalar_table(runs, keys) if keys else None


def dynamics(runs: Sequence[RunFiles]) -> str | None:
    """The learned ODE parameters' summary (`dynamics/*`: the step sizes h and the inhibition a)."""
    keys = keys_where(runs, lambda k, _: k.startswith("dynamics/"))
    return scalar_table(runs, keys) if keys else None


def attention(runs: Sequence[RunFiles]) -> str | None:
    """`attention/*` of `vitlab-eval analyse=attention`: its scalars, then its per-block lists one block a row."""
    scalars = keys_where(runs, lambda k, v: k.startswith("attention/") and not isinstance(v, (list, dict)))
    lists = keys_where(runs, lambda k, v: k.startswith("attention/") and isinstance(v, list) and _flat(v))
    lists = [k for k in lists if k != "attention/figures"]  # the figures are shown below
    parts = [scalar_table(runs, scalars)] if scalars else []
    columns = [
        (key.removeprefix("attention/") + (f" ({label})" if len(runs) > 1 else ""), run.results.get(key) or [])
        for key in lists
        for run, label in zip(runs, labels(runs), strict=True)
    ]
    if columns:
        depth = max(len(values) for _, values in columns)
        rows = [[i, *[values[i] if i < len(values) else None for _, values in columns]] for i in range(depth)]
        parts.append(table(["block", *[name for name, _ in columns]], rows))
    return "".join(parts) or None


def weights(runs: Sequence[RunFiles]) -> str | None:
    """What the pre-trained weights gave the model (weights_report.json): counts, then the names."""
    if not any(r.weights or any(k.startswith("weights/") for k in r.results) for r in runs):
        return None
    parts = [scalar_table(runs, keys_where(runs, lambda k, _: k.startswith("weights/")))]
    for run, label in zip(runs, labels(runs), strict=True):
        report = run.weights
        if not report:
            parts.append(f"<p class='muted'>{esc(label)}: no weights were loaded (every tensor is initialised).</p>")
            continue
        lists = [
            details(f"{label}: {kind} ({len(names)})", pre("\n".join(_names(names))))
            for kind in ("loaded", "new", "dropped")
            if (names := report.get(kind))
        ]
        parts.append(f"<h3>{esc(label)}: {esc(report.get('source', ''))}</h3>" + "".join(lists))
    return "".join(parts)


def per_class(runs: Sequence[RunFiles]) -> str | None:
    """One row per class from metrics/test.json: every per-class list there (accuracy, support, ...) as a column,
    per run; the class names of the first run that has them."""
    tests = [(label, r.test) for r, label in zip(runs, labels(runs), strict=True) if r.test]
    if not tests:
        return None
    columns: list[tuple[str, list[Any]]] = []
    names: list[Any] = []
    for label, test in tests:
        count = int(test.get("num_classes") or len(test.get("class_names") or []))
        names = names or list(test.get("class_names") or range(count))
        for key, value in test.items():
            if key != "class_names" and isinstance(value, list) and len(value) == count and _flat(value):
                columns.append((key.replace("_", " ") + (f" ({label})" if len(runs) > 1 else ""), value))
    if not columns:
        return None
    rows = [[str(name), *[col[i] if i < len(col) else None for _, col in columns]] for i, name in enumerate(names)]
    scalars = []
    for label, test in tests:
        found = {k: v for k, v in (test.get("scalars") or {}).items() if isinstance(v, (int, float))}
        extra = {k: test[k] for k in ("samples", "tta") if k in test}
        text = ", ".join(f"{k} {v:.4g}" if isinstance(v, float) else f"{k} {v}" for k, v in {**found, **extra}.items())
        scalars.append(f"<p class='muted'>{esc(label)}: {esc(text)}</p>")
    return "".join(scalars) + table(["class", *[name for name, _ in columns]], rows)


def _commit(run: RunFiles) -> str | None:
    attempt = run.last_attempt()
    sha = attempt.get("git_sha") or run.results.get("git_sha")
    if not sha:
        return None
    dirty = attempt.get("git_dirty", run.results.get("git_dirty"))
    return f"{sha}{' (uncommitted changes)' if dirty else ''}"


def _versions(versions: Any) -> str | None:
    if not isinstance(versions, dict):
        return None
    return ", ".join(f"{k} {v}" for k, v in versions.items() if k != "vitlab") or None


def _cell(value: Any) -> Any:
    return value if value is None or isinstance(value, (int, float, str, bool)) else str(value)


def _flat(values: list[Any]) -> bool:
    return all(v is None or isinstance(v, (int, float, str)) for v in values)


def _names(entries: Any) -> list[str]:
    if isinstance(entries, dict):
        return [f"{k}  ({why})" for k, why in entries.items()]
    return [str(e) for e in entries]
