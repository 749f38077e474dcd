"""`vitlab-bench attention`: time and peak memory of one mixer layer against sequence length.

Every (entry, length) pair runs in a fresh subprocess (`vitlab.bench.worker`), so allocator caches and
earlier peaks never leak between measurements. Writes `<out_dir>/attention.md`, `.json` and `.png`.
"""

from __future__ import annotations

import json
import logging
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path

from vitlab.bench.layers import ENTRIES

log = logging.getLogger("vitlab")


def run_entry(entry: str, seq_len: int, settings: dict, timeout: int) -> dict:
    cmd = [sys.executable, "-m", "vitlab.bench.worker", "--entry", entry, "--seq-len", str(seq_len)]
    for key, value in settings.items():
        cmd += [f"--{key.replace('_', '-')}", str(value)]
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        return {"entry": entry, "seq_len": seq_len, "error": f"timed out after {timeout} s"}
    if proc.returncode != 0:
        last = (proc.stderr.strip().splitlines() or ["no output"])[-1]
        return {"entry": entry, "seq_len": seq_len, "error": last[:200]}
    return json.loads(proc.stdout.strip().splitlines()[-1])


def run(
    seq_lens: Sequence[int], entries: Sequence[str], settings: dict, out_dir: Path, timeout: int = 900
) -> list[dict]:
    unknown = sorted(set(entries) - set(ENTRIES))
    if unknown:
        from vitlab.errors import ConfigError

        raise ConfigError(f"entries={unknown} are not benchmark entries; allowed: {', '.join(ENTRIES)}.")
    results = []
    for n in seq_lens:
        for name in entries:
            r = run_entry(name, n, settings, timeout)
            log.info("%-18s n=%-5d %s", name, n, r.get("error") or f"{r['time_ms']:9.1f} ms {r['peak_mb']:8.1f} MB")
            results.append(r)
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "attention.json").write_text(json.dumps({"settings": settings, "results": results}, indent=2))
    (out_dir / "attention.md").write_text(render_markdown(results, settings))
    plot(results, out_dir / "attention.png", settings)
    return results


def _cell(r: dict | None, key: str, fmt: str) -> str:
    if r is None:
        return "–"
    return "failed" if "error" in r else format(r[key], fmt)


def render_markdown(results: list[dict], settings: dict) -> str:
    lens = sorted({r["seq_len"] for r in results})
    names = list(dict.fromkeys(r["entry"] for r in results))
    get = {(r["entry"], r["seq_len"]): r for r in results}
    top = lens[-1]
    lines = [
        f"One mixer layer, forward + backward: batch {settings.get('batch')}, dim {settings.get('dim')}, "
        f"{settings.get('heads')} heads, fp32, device `{settings.get('device')}`. Time: median ms; memory: peak MB "
        "above the process baseline. Each cell is a fresh process.",
        "",
        "| layer | "
        + " | ".join(f"ms @ {n}" for n in lens)
        + " | "
        + " | ".join(f"MB @ {n}" for n in lens)
        + f" | speed-up vs package @ {top} | memory vs naive softmax @ {top} |",
        "|---|" + "---:|" * (2 * len(lens) + 2),
    ]
    naive = get.get(("softmax_naive", top))
    for name in names:
        entry = ENTRIES[name]
        row = [entry.label]
        row += [_cell(get.get((name, n)), "time_ms", ".1f") for n in lens]
        row += [_cell(get.get((name, n)), "peak_mb", ".0f") for n in lens]
        ours = get.get((name, top))
        refs = [e.name for e in ENTRIES.values() if e.reference and e.family == entry.family and not entry.reference]
        ref = get.get((refs[0], top)) if refs else None
        ok = ours is not None and "error" not in ours
        row.append(f"{ref['time_ms'] / ours['time_ms']:.2f}×" if ok and ref and "error" not in ref else "")
        if ok and naive and "error" not in naive and name != "softmax_naive" and ours["peak_mb"] > 0:
            ratio = naive["peak_mb"] / ours["peak_mb"]
            row.append(f"{ratio:.1f}× less" if ratio >= 1 else f"{1 / ratio:.1f}× more")
        else:
            row.append("")
        lines.append("| " + " | ".join(row) + " |")
    return "\n".join(lines) + "\n"


def plot(results: list[dict], path: Path, settings: dict) -> None:
    import matplotlib
    import matplotlib.ticker

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(11, 4.2))
    for name in dict.fromkeys(r["entry"] for r in results):
        ok = sorted((r["seq_len"], r) for r in results if r["entry"] == name and "error" not in r)
        if not ok:
            continue
        style = "--" if ENTRIES[name].reference else "-"
        for ax, key in zip(axes, ("time_ms", "peak_mb"), strict=True):
            ax.plot(
                [n for n, _ in ok], [max(r[key], 1e-3) for _, r in ok], style, marker="o", label=ENTRIES[name].label
            )
    lens = sorted({r["seq_len"] for r in results})
    for ax, label in zip(axes, ("forward+backward time (ms)", "peak memory above baseline (MB)"), strict=True):
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_xticks(lens, [str(n) for n in lens])
        ax.xaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())
        ax.set_xlabel("sequence length (tokens)")
        ax.set_ylabel(label)
        ax.grid(True, which="both", alpha=0.3)
    axes[1].legend(fontsize=7)
    fig.suptitle(
        f"one mixer layer: batch {settings.get('batch')}, dim {settings.get('dim')}, "
        f"{settings.get('heads')} heads, {settings.get('device')} (dashed: reference packages)",
        fontsize=9,
    )
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
