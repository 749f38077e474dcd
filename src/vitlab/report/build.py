"""`build_report`: one self-contained `report.html` for a run, optionally beside a second run (docs/report.md).

Sections, each left out when neither run has anything for it: run, config (and its diff), curves, cost,
weights, results, per-class results, probes, calibration, attention maps, ODE pictures, other figures.
Every figure is a PNG that a command or callback of the run wrote under `<run dir>/figures/`, inlined as a data
URI; the curves are drawn here from `csv/metrics.csv`. Nothing is fetched or uploaded: the figures reached W&B
when the run made them.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from vitlab.plots.curves import curves_png
from vitlab.plots.figures import pyplot
from vitlab.report import sections
from vitlab.report.html import esc, image, page
from vitlab.report.run_files import RunFiles, read_run
from vitlab.runs.files import write_text

REPORT_FILE = "report.html"
# figure name prefix -> the section that shows it; the rest go to "other figures"
FIGURE_GROUPS = {
    "per_class": ("confusion_matrix",),
    "calibration": ("reliability",),
    "attention": ("attention",),
    "ode": ("ode_",),
}
CURVE_PANELS = (("loss", ("loss",)), ("accuracy", ("acc",)))
PANEL_ORDER = ("loss", "accuracy", "learning rate")


def build_report(run_dir: str | Path, other: str | Path | None = None, out: str | Path | None = None) -> Path:
    """Write the report of `run_dir` (beside `other` when given) to `out` (default `<run_dir>/report.html`),
    atomically; return its path. `MissingExtra` without matplotlib, `ConfigError` for a folder that is not a run."""
    pyplot("vitlab-report")  # the [plots] extra, asked for before anything is read
    runs = [read_run(Path(run_dir))] + ([read_run(Path(other))] if other is not None else [])
    path = Path(out) if out is not None else runs[0].path / REPORT_FILE
    path.parent.mkdir(parents=True, exist_ok=True)
    write_text(path, render(runs))
    return path


def render(runs: Sequence[RunFiles]) -> str:
    """The whole page for one or two runs."""
    title = "vitlab report: " + " vs ".join(sections.labels(runs))
    shown: set[str] = set()

    def figures(group: str) -> str:
        names = _figure_names(runs, FIGURE_GROUPS[group])
        shown.update(names)
        return figure_grid(runs, names)

    parts = [
        ("run", "Run", sections.header(runs)),
        ("config", "Config", sections.config(runs)),
        ("curves", "Curves", curves(runs)),
        ("cost", "Cost", sections.cost(runs)),
        ("weights", "Weights", sections.weights(runs)),
        ("results", "Results", sections.results(runs)),
        ("per-class", "Per-class results", _join(sections.per_class(runs), figures("per_class"))),
        ("probes", "Probes", sections.probes(runs)),
        ("calibration", "Calibration", _join(sections.calibration_numbers(runs), figures("calibration"))),
        ("attention", "Attention maps", _join(sections.attention(runs), figures("attention"))),
        ("ode", "ODE pictures", _join(sections.dynamics(runs), figures("ode"))),
    ]
    rest = [n for n in _figure_names(runs, ("",)) if n not in shown]
    parts.append(("figures", "Other figures", figure_grid(runs, rest)))
    skipped = [f"{r.name}/figures/{n}" for r in runs for n in r.skipped_figures]
    if skipped:
        note = "Not shown, not whole PNG files (a figure still being written?): " + ", ".join(skipped)
        parts.append(("skipped", "Skipped files", f"<p class='muted'>{esc(note)}</p>"))
    return page(title, [(a, h, body) for a, h, body in parts if body])


def curves(runs: Sequence[RunFiles]) -> str | None:
    """Loss, accuracy and learning rate against the step, from each run's metrics.csv."""
    series = [(label, curve_series(run.metrics)) for run, label in zip(runs, sections.labels(runs), strict=True)]
    png = curves_png(series)
    if png is None:
        return None
    return image(png, "training curves", "From csv/metrics.csv (the CSV logger): one point per logged step or epoch.")


def curve_series(rows: Sequence[dict[str, float]]) -> dict[str, dict[str, tuple[list[float], list[float]]]]:
    """{panel: {column: (steps, values)}} for the loss, accuracy and learning-rate columns of metrics.csv (test
    metrics are single points: they are in the results table instead). Duplicate series (an lr logged once per
    parameter group) are kept once."""
    panels: dict[str, dict[str, tuple[list[float], list[float]]]] = {}
    columns = list(dict.fromkeys(k for row in rows for k in row))
    for key in columns:
        if key in ("epoch", "step") or key.startswith(("test/", "params/", "cost/", "dynamics/")):
            continue
        panel = "learning rate" if key.startswith("lr") else _panel(key)
        if panel is None:
            continue
        points = [(row["step"], row[key]) for row in rows if key in row and "step" in row]
        if not points:
            continue
        xy = ([p[0] for p in points], [p[1] for p in points])
        if xy not in panels.get(panel, {}).values():
            panels.setdefault(panel, {})[key] = xy
    return {panel: panels[panel] for panel in PANEL_ORDER if panel in panels}


def figure_grid(runs: Sequence[RunFiles], names: Sequence[str]) -> str | None:
    """Each named figure of each run; with two runs, side by side (an absent one says so)."""
    if not names:
        return None
    labels = sections.labels(runs)
    out = []
    for name in names:
        cells = []
        for run, label in zip(runs, labels, strict=True):
            png = run.figures.get(name)
            caption = f"{label}: figures/{name}.png" if len(runs) > 1 else f"figures/{name}.png"
            cells.append(image(png, name, caption) if png else f"<p class='muted'>{esc(label)}: no {esc(name)}.png</p>")
        out.append(f'<div class="pair">{"".join(cells)}</div>' if len(runs) > 1 else cells[0])
    return "".join(out)


def _figure_names(runs: Sequence[RunFiles], prefixes: Sequence[str]) -> list[str]:
    names = {n for r in runs for n in r.figures if n.startswith(tuple(prefixes))}
    return sorted(names)


def _panel(key: str) -> str | None:
    return next((panel for panel, words in CURVE_PANELS if any(w in key for w in words)), None)


def _join(*parts: str | None) -> str | None:
    found = [p for p in parts if p]
    return "".join(found) or None
