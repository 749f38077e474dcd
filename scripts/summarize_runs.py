"""Mean ± std over seeds of every run under a log directory, one row per set of overrides.

    python scripts/summarize_runs.py outputs/vix_digits_study [--metric test/acc]
    python scripts/summarize_runs.py outputs/ode_study --select optim.lr     # pick lr per row on val/acc
    python scripts/summarize_runs.py outputs/vtab --vtab     # one row per method: VTAB-1k group and flat means

Rows are keyed by each run's overrides (from results.json) without `seed` and `paths.*`; failed runs are
counted, not averaged. With `--select KEY`, runs that differ only in KEY form one row, and the row reports
the KEY value whose mean `--select-metric` (default `val/acc`, never the test metric) over seeds is best.
With `--vtab`, runs that differ only in `data.task` form one row with the three VTAB-1k group means, their
mean (VPT/NOAH/FacT's "average") and the flat mean over the tasks present (docs/papers/ode.md#averaging-conventions).
"""

from __future__ import annotations

import argparse
import json
import statistics
from collections import defaultdict
from pathlib import Path

IGNORED = ("seed=", "paths.", "trainer.enable_progress_bar", "experiment=", "hydra.")


def row_key(overrides: list[str], select: str | None = None) -> tuple[str, str]:
    """(row, selected value): the row is the overrides minus the ignored ones and minus `select=...`."""
    kept = [o for o in overrides if not o.startswith(IGNORED)]
    chosen = [o.split("=", 1)[1] for o in kept if select and o.startswith(f"{select}=")]
    kept = [o for o in kept if not (select and o.startswith(f"{select}="))]
    return " ".join(kept) or "(baseline)", chosen[0] if chosen else "–"


def mean_std(values: list[float]) -> tuple[float, float]:
    mean = statistics.mean(values) if values else float("nan")
    return mean, statistics.stdev(values) if len(values) > 1 else 0.0


def load(log_dir: Path, select: str | None) -> dict[str, dict[str, list[dict]]]:
    rows: dict[str, dict[str, list[dict]]] = defaultdict(lambda: defaultdict(list))
    for path in sorted(log_dir.rglob("results.json")):
        record = json.loads(path.read_text())
        row, value = row_key(record.get("overrides", []), select)
        rows[row][value].append(record)
    return rows


def summarize(log_dir: Path, metric: str, select: str | None = None, select_metric: str = "val/acc") -> str:
    header = f"| run |{f' {select} |' if select else ''} {metric} (mean ± std) | seeds | trainable (no head) | params |"
    lines = [header + " MACs/img | train img/s |", "|---|" + ("---|" if select else "") + "---:|" * 6]
    for key, by_value in load(log_dir, select).items():
        ok_by_value = {
            v: [r for r in rs if r.get("status") == "ok" and r.get(metric) is not None] for v, rs in by_value.items()
        }
        value = max(ok_by_value, key=lambda v: mean_std([float(r.get(select_metric) or 0) for r in ok_by_value[v]])[0])
        records, ok = by_value[value], ok_by_value[value]
        mean, std = mean_std([float(r[metric]) for r in ok])
        failed, first = len(records) - len(ok), ok[0] if ok else {}
        img_s = statistics.mean(r.get("cost/train_img_per_s") or 0 for r in ok) if ok else 0
        lines.append(
            f"| `{key}` |{f' {value} |' if select else ''} {mean:.4f} ± {std:.4f} | "
            f"{len(ok)}{f' ({failed} failed)' if failed else ''} | {first.get('params/trainable_no_head', '–'):,} | "
            f"{first.get('params/total', '–'):,} | {first.get('cost/macs_per_image', 0) / 1e6:.1f} M | {img_s:.0f} |"
        )
    return "\n".join(lines)


def summarize_vtab(log_dir: Path, metric: str) -> str:
    from vitlab.data.vtab_tasks import TASKS, vtab_means

    lines = [
        "| run | tasks | natural | specialized | structured | group mean | flat mean | trainable (no head) |",
        "|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for key, by_task in load(log_dir, "data.task").items():
        acc = {}
        for task, records in by_task.items():
            ok = [float(r[metric]) for r in records if r.get("status") == "ok" and r.get(metric) is not None]
            if task in TASKS and ok:
                acc[task] = 100 * statistics.mean(ok)
        if not acc:
            continue
        m = vtab_means(acc, partial=True)
        first = next(r for rs in by_task.values() for r in rs)
        cells = " | ".join(f"{m[g]:.2f}" for g in ("natural", "specialized", "structured", "group_mean", "flat_mean"))
        lines.append(f"| `{key}` | {len(acc)}/19 | {cells} | {first.get('params/trainable_no_head', '–'):,} |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("log_dir", type=Path)
    parser.add_argument("--metric", default="test/acc")
    parser.add_argument("--select", default=None, help="an override to choose per row on --select-metric")
    parser.add_argument("--select-metric", default="val/acc")
    parser.add_argument("--vtab", action="store_true", help="VTAB-1k means per method over data.task")
    args = parser.parse_args()
    if args.select and args.select_metric == args.metric:
        parser.error("--select-metric must differ from --metric (choose on validation, report on test)")
    if args.vtab:
        print(summarize_vtab(args.log_dir, args.metric))
    else:
        print(summarize(args.log_dir, args.metric, args.select, args.select_metric))


if __name__ == "__main__":
    main()
