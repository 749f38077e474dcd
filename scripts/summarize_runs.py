"""Mean ± std over seeds of every run under a log directory, one row per set of overrides.

    python scripts/summarize_runs.py outputs/vix_digits_study [--metric test/acc]

Rows are keyed by each run's overrides (from results.json) without `seed` and `paths.*`; failed runs are
counted, not averaged.
"""

from __future__ import annotations

import argparse
import json
import statistics
from collections import defaultdict
from pathlib import Path

IGNORED = ("seed=", "paths.", "trainer.enable_progress_bar", "experiment=", "hydra.")


def row_key(overrides: list[str]) -> str:
    kept = [o for o in overrides if not o.startswith(IGNORED)]
    return " ".join(kept) or "(baseline)"


def summarize(log_dir: Path, metric: str) -> str:
    rows: dict[str, list[dict]] = defaultdict(list)
    for path in sorted(log_dir.rglob("results.json")):
        record = json.loads(path.read_text())
        rows[row_key(record.get("overrides", []))].append(record)
    lines = [
        f"| run | {metric} (mean ± std) | seeds | params | MACs/img | train img/s |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for key, records in rows.items():
        ok = [r for r in records if r.get("status") == "ok" and r.get(metric) is not None]
        values = [float(r[metric]) for r in ok]
        mean = statistics.mean(values) if values else float("nan")
        std = statistics.stdev(values) if len(values) > 1 else 0.0
        failed = len(records) - len(ok)
        first = ok[0] if ok else {}
        lines.append(
            f"| `{key}` | {mean:.4f} ± {std:.4f} | {len(ok)}{f' ({failed} failed)' if failed else ''} | "
            f"{first.get('params/total', '–'):,} | {first.get('cost/macs_per_image', 0) / 1e6:.1f} M | "
            f"{statistics.mean(r.get('cost/train_img_per_s') or 0 for r in ok) if ok else 0:.0f} |"
        )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("log_dir", type=Path)
    parser.add_argument("--metric", default="test/acc")
    args = parser.parse_args()
    print(summarize(args.log_dir, args.metric))


if __name__ == "__main__":
    main()
