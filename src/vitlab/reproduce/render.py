"""Render collected rows as Markdown, CSV (one line per row x column, for scripts), LaTeX (booktabs) and a
PNG plot. Cells say what happened: `–` no run yet, `failed`, `(k/n)` for partial results, and rows whose
capability is missing say `not implemented: <needs>`; no number is ever made up for them.
"""

from __future__ import annotations

import csv
import io
import logging
import math
from pathlib import Path

from vitlab.extras import is_installed, missing_extra_message
from vitlab.reproduce.aggregate import LATE_GAIN, Cell, RowResult
from vitlab.reproduce.convergence import STILL_RISING, converged_text
from vitlab.reproduce.spec import PARAMS_KEYS, TableSpec
from vitlab.runs.files import atomic_open, write_text

log = logging.getLogger(__name__)

COLUMN_NAMES = {"natural": "Natural", "specialized": "Specialized", "structured": "Structured",
                "group_mean": "Group mean", "flat_mean": "Flat mean", "mean": "Mean"}  # fmt: skip
AXIS_NAMES = {"params/trainable_no_head": "trainable parameters (no head)",
              "params/trainable": "trainable parameters", "params/total": "parameters",
              "cost/peak_mem_mb": "peak memory (MB)", "cost/macs_per_image": "MACs per image",
              "cost/macs_no_attn_per_image": "MACs per image (no attention matmuls)",
              "cost/train_img_per_s": "training images/s"}  # fmt: skip
TEX = {"\\": r"\textbackslash{}", "&": r"\&", "%": r"\%", "$": r"\$", "#": r"\#", "_": r"\_", "{": r"\{",
       "}": r"\}", "~": r"\textasciitilde{}", "^": r"\textasciicircum{}", "±": r"$\pm$", "–": "--", "−": "$-$",
       "Δ": r"$\Delta$", "×": r"$\times$", "§": r"\S{}", "≤": r"$\leq$", "≥": r"$\geq$"}  # fmt: skip


def _digits(spec: TableSpec) -> int:
    return 2 if spec.units == "percent" else 4


def _num(value: float | None, digits: int, signed: bool = False) -> str:
    if value is None or math.isnan(value):
        return "–"
    value = 0.0 if round(value, digits) == 0 else value  # no "−0.00"
    text = f"{value:+.{digits}f}" if signed else f"{value:.{digits}f}"
    return text.replace("-", "−")


def _count(value: float | None) -> str:
    """Parameter and MAC counts: 24, 18.4 k, 3.51 M, 1.73 G."""
    if value is None:
        return "–"
    for scale, suffix in ((1e9, " G"), (1e6, " M"), (1e3, " k")):
        if abs(value) >= scale:
            return f"{value / scale:.3g}{suffix}"
    return f"{value:.0f}"


def cell_text(cell: Cell, spec: TableSpec) -> str:
    """How a cell reads in Markdown and LaTeX."""
    if cell.status == "not_implemented":
        return "not implemented"
    if cell.status == "missing" or cell.mean is None:
        return "failed" if cell.status == "failed" else "–"
    text = _num(cell.mean, _digits(spec))
    if cell.std is not None:
        text += f" ± {_num(cell.std, _digits(spec))}"
    if cell.status == "partial":
        text += f" ({cell.n_ok}/{cell.n_expected}{f', {cell.n_failed} failed' if cell.n_failed else ''})"
    return text


def _main_columns(spec: TableSpec, results: list[RowResult]) -> list[str]:
    """Data sets and summaries side by side; a VTAB table shows its summaries here, its tasks in detail."""
    columns = list(results[0].cells) if results else [d.name for d in spec.datasets]
    return list(spec.summary_columns) if spec.summary == "vtab" else columns


def _label(spec: TableSpec, column: str) -> str:
    return next((d.label for d in spec.datasets if d.name == column), COLUMN_NAMES.get(column, column))


def _grid(results: list[RowResult], spec: TableSpec) -> tuple[list[str], list[list[str]]]:
    """Header and rows of the main table, as plain text shared by Markdown and LaTeX."""
    columns = _main_columns(spec, results)
    has_paper = {c: any(r.cells[c].paper is not None for r in results if c in r.cells) for c in columns}
    paper_params = any(r.row.params_paper is not None for r in results)
    paper_macs = any(r.row.macs_paper is not None for r in results)
    selected = any(c.selected for r in results for c in r.cells.values())
    header = ["Method"]
    for c in columns:
        header += [_label(spec, c)] + ([spec.paper_label, "Δ"] if has_paper[c] else [])
    header += ["Trainable (no head)", "Params"] + ([f"Params ({spec.paper_label})"] if paper_params else [])
    header += ["MACs/img"] + ([f"MACs ({spec.paper_label})"] if paper_macs else [])
    header += ["Peak mem (MB)", "Train img/s", "Converged"] + (["Selected"] if selected else []) + ["Note"]
    rows = []
    for r in results:
        line = [r.label]
        for c in columns:
            cell = r.cells[c]
            paper = _num(cell.paper, _digits(spec)) + ("*" if cell.paper_subset else "")
            line += [cell_text(cell, spec)] + ([paper, _num(cell.diff, _digits(spec), True)] if has_paper[c] else [])
        line += [_count(r.cost.get("params/trainable_no_head")), _count(r.cost.get("params/total"))]
        line += [_count(r.row.params_paper)] if paper_params else []
        line += [_count(r.cost.get(spec.macs_key))] + ([_count(r.row.macs_paper)] if paper_macs else [])
        mem, speed = r.cost.get("cost/peak_mem_mb"), r.cost.get("cost/train_img_per_s")
        line += [_num(mem, 0), _num(speed, 0), converged_text(r.cost.get(LATE_GAIN), spec.unit_factor)]
        line += ["; ".join(f"{c.column}: {c.selected}" for c in r.cells.values() if c.selected)] if selected else []
        line += [f"not implemented: {r.row.needs}" if r.row.needs else (r.row.note or "")]
        rows.append(line)
    return header, rows


def _detail(results: list[RowResult], spec: TableSpec) -> tuple[list[str], list[list[str]]] | None:
    """Per-task table of a VTAB table, with a line of paper numbers under each row that has them."""
    if spec.summary != "vtab" or not results:
        return None
    tasks = [c for c, cell in results[0].cells.items() if cell.kind == "dataset"]
    rows = []
    for r in results:
        rows.append([r.label, *(cell_text(r.cells[t], spec) for t in tasks)])
        if any(r.cells[t].paper is not None for t in tasks):
            rows.append([f"{r.label} ({spec.paper_label})", *(_num(r.cells[t].paper, 1) for t in tasks)])
    return ["Method", *(_label(spec, t) for t in tasks)], rows


def _failures(results: list[RowResult]) -> list[str]:
    return [
        f"{r.label} / {c.column}: {c.n_failed} failed: {' '.join((c.error or '').split())[:300]}"
        for r in results
        for c in r.cells.values()
        if c.n_failed and c.kind == "dataset"
    ]


def _scale_of(results: list[RowResult]) -> str:
    return results[0].scale if results else "?"


def _seeds(spec: TableSpec, results: list[RowResult]) -> str:
    scale = _scale_of(results)
    return ", ".join(map(str, spec.scales[scale].seeds)) if scale in spec.scales else "?"


def render_markdown(results: list[RowResult], spec: TableSpec) -> str:
    """The table as GitHub Markdown, with the source, notes, a legend and the failures' first errors."""

    def table(header: list[str], rows: list[list[str]], last: str) -> list[str]:
        esc = [[c.replace("|", "\\|") for c in line] for line in [header, *rows]]
        align = "|---|" + "---:|" * (len(header) - 2) + last
        return ["| " + " | ".join(esc[0]) + " |", align, *("| " + " | ".join(line) + " |" for line in esc[1:])]

    lines = [f"# {spec.title}", ""]
    lines += [f"`{spec.key}` · scale **{_scale_of(results)}** · {spec.metric} in {spec.units}, mean ± std over "
              f"seeds {_seeds(spec, results)} · {spec.paper_label} numbers: {spec.source}", ""]  # fmt: skip
    lines += [f"- {note}" for note in spec.notes] + ([""] if spec.notes else [])
    lines += table(*_grid(results, spec), "---|")
    detail = _detail(results, spec)
    if detail:
        lines += ["", "## Per task", "", *table(*detail, "---:|")]
    lines += ["", "`–` no result yet · `failed` every run failed · `(k/n)` only k of n seeds (or data sets) finished"
              " · `*` the paper's mean recomputed over the same data sets as ours · Δ = ours − paper"
              f" · Converged: `no` when val/acc still rose by {100 * STILL_RISING:.0f} point or more from the third to"
              " the last quarter of the epochs (the rise in brackets, mean over the row's runs)"]  # fmt: skip
    failures = _failures(results)
    if failures:
        lines += ["", "## Failures", "", *(f"- {f}" for f in failures)]
    return "\n".join(lines) + "\n"


CSV_FIELDS = ["paper", "table", "scale", "row", "label", "column", "kind", "status", "mean", "std", "n_ok",
              "n_failed", "n_expected", "paper_value", "diff", "paper_subset", "selected", *PARAMS_KEYS,
              "params_paper", "macs_per_image", "macs_paper", "peak_mem_mb", "train_img_per_s", "val_late_gain",
              "data_sha256", "needs", "error"]  # fmt: skip


def _csv_record(spec: TableSpec, r: RowResult, c: Cell) -> dict[str, object]:
    return {"paper": spec.paper, "table": spec.table, "scale": r.scale, "row": r.name, "label": r.label,
            "column": c.column, "kind": c.kind, "status": c.status, "mean": c.mean, "std": c.std, "n_ok": c.n_ok,
            "n_failed": c.n_failed, "n_expected": c.n_expected, "paper_value": c.paper, "diff": c.diff,
            "paper_subset": c.paper_subset, "selected": c.selected, **{k: r.cost.get(k) for k in PARAMS_KEYS},
            "params_paper": r.row.params_paper, "macs_per_image": r.cost.get(spec.macs_key),
            "macs_paper": r.row.macs_paper, "peak_mem_mb": r.cost.get("cost/peak_mem_mb"),
            "train_img_per_s": r.cost.get("cost/train_img_per_s"), "val_late_gain": r.cost.get(LATE_GAIN),
            "data_sha256": c.data_sha256, "needs": r.row.needs,
            "error": c.error}  # fmt: skip


def render_csv(results: list[RowResult], spec: TableSpec) -> str:
    """One line per row x column with every number unrounded (empty when absent) and the cell status."""
    out = io.StringIO()
    writer = csv.DictWriter(out, fieldnames=CSV_FIELDS, lineterminator="\n")
    writer.writeheader()
    for r in results:
        for c in r.cells.values():
            writer.writerow(_csv_record(spec, r, c))
    return out.getvalue()


def tex_escape(text: str) -> str:
    """Escape LaTeX specials and map the few Unicode signs the tables use (±, –, −, Δ, ×, §)."""
    return "".join(TEX.get(ch, ch) for ch in text)


def render_latex(results: list[RowResult], spec: TableSpec) -> str:
    """A booktabs table (needs \\usepackage{booktabs}); a VTAB table gets a second, per-task tabular."""

    def tabular(header: list[str], rows: list[list[str]], last: str) -> list[str]:
        cols = "l" + "r" * (len(header) - 2) + last
        head, *body = [" & ".join(tex_escape(c) for c in line) + r" \\" for line in [header, *rows]]
        return [
            f"\\begin{{tabular}}{{{cols}}}",
            "\\toprule",
            head,
            "\\midrule",
            *body,
            "\\bottomrule",
            "\\end{tabular}",
        ]

    caption = (f"{spec.title} (scale {_scale_of(results)}; {spec.metric} in {spec.units}, mean ± std over seeds "
               f"{_seeds(spec, results)}). {spec.paper_label.capitalize()} numbers: {spec.source}")  # fmt: skip
    lines = [f"% generated by vitlab.reproduce from {spec.key}", "\\begin{table}[t]", "\\centering", "\\small"]
    lines += [f"\\caption{{{tex_escape(caption)}}}", f"\\label{{tab:{spec.paper}_{spec.table}}}"]
    lines += ["\\resizebox{\\linewidth}{!}{%", *tabular(*_grid(results, spec), "l"), "}"]
    detail = _detail(results, spec)
    if detail:
        lines += ["\\\\[1ex]", "\\resizebox{\\linewidth}{!}{%", *tabular(*detail, "r"), "}"]
    return "\n".join([*lines, "\\end{table}"]) + "\n"


def render_plot(results: list[RowResult], spec: TableSpec, path: Path | str) -> Path:
    """Metric (`plot.y`) against `plot.x`; filled points are ours (with std bars), hollow ones the paper's
    (at the paper's parameter count when x is the count the paper reports, else at ours)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(7.0, 4.8), layout="constrained")
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    x_key, y_col = spec.plot.x, spec.plot.y
    xs: list[float] = []
    for i, r in enumerate(results):
        cell, x = r.cells.get(y_col), r.cost.get(x_key)
        if cell is None:
            continue
        color = f"C{i % 10}"
        if x is not None and cell.mean is not None:
            ax.errorbar([x], [cell.mean], yerr=[cell.std or 0.0], fmt="o", color=color, capsize=3)
            ax.annotate(r.label, (x, cell.mean), textcoords="offset points", xytext=(4, 4), fontsize=8)
            xs.append(x)
        x_paper = r.row.params_paper if x_key == spec.params_paper_key and r.row.params_paper is not None else x
        if cell.paper is not None and x_paper is not None:
            ax.plot([x_paper], [cell.paper], "o", mfc="none", color=color, markersize=9)
            if cell.mean is None:
                ax.annotate(r.label, (x_paper, cell.paper), textcoords="offset points", xytext=(4, -10), fontsize=8)
            xs.append(x_paper)
    if not xs:
        ax.text(0.5, 0.5, "no finished runs yet", ha="center", va="center", transform=ax.transAxes)
    elif x_key in PARAMS_KEYS or x_key.startswith("cost/macs"):
        ax.set_xscale("log" if min(xs) > 0 else "symlog", **({} if min(xs) > 0 else {"linthresh": 1.0}))
    ax.set_xlabel(AXIS_NAMES.get(x_key, x_key))
    ax.set_ylabel(f"{_label(spec, y_col)}: {spec.metric} ({'%' if spec.units == 'percent' else 'fraction'})")
    ax.set_title(f"{spec.title} — scale {_scale_of(results)}\nfilled: ours · hollow: {spec.paper_label}", fontsize=9)
    ax.grid(alpha=0.3)
    path = Path(path)
    with atomic_open(path, "wb") as handle:  # whole or absent, like every file vitlab writes
        fig.savefig(handle, dpi=120, format=path.suffix.lstrip(".") or "png")
    return path


def write_all(
    results: list[RowResult], spec: TableSpec, out_dir: Path | str, stem: str | None = None
) -> dict[str, Path]:
    """Write `<out_dir>/<paper>_<table>.{md,csv,tex,png}` (or `<stem>.*`); returns {extension: path}."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    stem = stem or f"{spec.paper}_{spec.table}"
    paths = {ext: out_dir / f"{stem}.{ext}" for ext in ("md", "csv", "tex", "png")}
    write_text(paths["md"], render_markdown(results, spec))
    write_text(paths["csv"], render_csv(results, spec))
    write_text(paths["tex"], render_latex(results, spec))
    if is_installed("plots"):
        render_plot(results, spec, paths["png"])
    else:  # the table itself needs nothing optional; only its figure does
        log.warning("no %s: %s", paths.pop("png").name, missing_extra_message("plots"))
    return paths
