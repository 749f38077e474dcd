"""`vitlab-bench attention`: time and peak memory of one mixer layer against sequence length.

Per sequence length, one fresh process (`vitlab.bench.worker time`) times every entry in interleaved rounds,
so a speed-up is the ratio of the reference's time to ours *within* each round (median, min–max over rounds).
Peak memory on the CPU comes from one fresh process per entry (`worker memory`: the resident-set peak never
goes down); on CUDA from the timing process itself (`max_memory_allocated`, reset per entry). Writes
`<out_dir>/attention.md`, `.json` and `.png`; every table starts
with the machine it was measured on.
"""

from __future__ import annotations

import logging
import sys
from collections.abc import Sequence
from pathlib import Path

from vitlab.bench.env import environment, header
from vitlab.bench.json_process import run_json_process
from vitlab.bench.layers import ENTRIES, REFERENCE_PACKAGES, reference_of
from vitlab.bench.rounds import MIN_ROUNDS, Spread, ratios
from vitlab.runs.files import atomic_open, write_json, write_text

log = logging.getLogger("vitlab")
SHAPE_KEYS = ("batch_size", "dim", "heads", "device", "precision")


def _worker(mode: str, entries: Sequence[str], seq_len: int, settings: dict, timeout: int) -> dict:
    cmd = [sys.executable, "-m", "vitlab.bench.worker", mode, "--entries", ",".join(entries), "--seq-len", str(seq_len)]
    keys = (*SHAPE_KEYS, "rounds", "untimed_rounds") if mode == "time" else SHAPE_KEYS
    for key in keys:
        if key in settings:  # precision: absent from settings written before it existed
            cmd += [f"--{key.replace('_', '-')}", str(settings[key])]
    return run_json_process(cmd, timeout)


def measure_length(entries: Sequence[str], seq_len: int, settings: dict, timeout: int) -> list[dict]:
    """Interleaved timing of all entries at one length, then each entry's peak memory in its own process."""
    timed = _worker("time", entries, seq_len, settings, timeout)
    results = []
    for name in entries:
        error = timed.get("error") or timed.get("errors", {}).get(name)
        if error:
            results.append({"entry": name, "seq_len": seq_len, "error": error})
            continue
        rounds_ms = timed["times_ms"][name]
        spread = Spread.of(rounds_ms)
        record = {"entry": name, "seq_len": seq_len, "time_ms": spread.median, "time_min_ms": spread.low}
        record |= {"time_max_ms": spread.high, "rounds_ms": rounds_ms}
        cuda_peak = timed.get("peak_mb", {}).get(name)
        memory = (
            {"peak_mb": cuda_peak} if cuda_peak is not None else _worker("memory", [name], seq_len, settings, timeout)
        )
        record["peak_mb"] = memory.get("peak_mb")  # None: the memory process failed (its error is kept)
        if "error" in memory:
            record["memory_error"] = memory["error"]
        results.append(record)
    return results


def run(
    seq_lens: Sequence[int], entries: Sequence[str], settings: dict, out_dir: Path, timeout: int = 900
) -> list[dict]:
    unknown = sorted(set(entries) - set(ENTRIES))
    if unknown:
        from vitlab.errors import ConfigError

        raise ConfigError(f"entries={unknown} are not benchmark entries; allowed: {', '.join(ENTRIES)}.")
    env = environment(str(settings["device"]), extra=REFERENCE_PACKAGES)
    results = []
    for n in seq_lens:
        for r in measure_length(entries, n, settings, timeout):
            text = r["error"] if "error" in r else f"{r['time_ms']:9.1f} ms {r['peak_mb'] or float('nan'):8.1f} MB"
            log.info("%-18s n=%-5d %s", r["entry"], n, text)
            results.append(r)
    out_dir.mkdir(parents=True, exist_ok=True)
    record = {"settings": settings, "env": env, "results": results}
    write_json(out_dir / "attention.json", record)
    write_text(out_dir / "attention.md", render_markdown(results, settings, env))
    plot(results, out_dir / "attention.png", settings)
    return results


def _cell(r: dict | None, key: str, fmt: str) -> str:
    if r is None:
        return "–"
    if "error" in r:
        return "failed"
    if r.get(key) is None:
        return "failed"
    if key == "time_ms" and "time_min_ms" in r:
        return f"{r['time_ms']:{fmt}} ({r['time_min_ms']:{fmt}}–{r['time_max_ms']:{fmt}})"
    return format(r[key], fmt)


def speedup(ours: dict | None, ref: dict | None) -> Spread | None:
    """Reference time / our time per round of the same process; None when either side failed."""
    if not ours or not ref or "error" in ours or "error" in ref:
        return None
    if "rounds_ms" in ours and "rounds_ms" in ref:
        return ratios(ref["rounds_ms"], ours["rounds_ms"])
    value = ref["time_ms"] / ours["time_ms"]
    return Spread(value, value, value)


def render_markdown(results: list[dict], settings: dict, env: dict | None = None) -> str:
    lens = sorted({r["seq_len"] for r in results})
    names = list(dict.fromkeys(r["entry"] for r in results))
    get = {(r["entry"], r["seq_len"]): r for r in results}
    top = lens[-1]
    rounds = settings.get("rounds")
    few = f" Fewer than {MIN_ROUNDS} rounds: indicative only." if rounds and rounds < MIN_ROUNDS else ""
    lines = [header(env), ""] if env else []
    lines += [
        f"One mixer layer, forward + backward: batch {settings.get('batch_size')}, dim {settings.get('dim')}, "
        f"{settings.get('heads')} heads, {settings.get('precision', 'fp32')}, device `{settings.get('device')}`. "
        "Time: median ms (min–max) of "
        f"{rounds} interleaved rounds in one process per length; memory: peak MB above the process baseline, one "
        f"fresh process per cell.{few}",
        "",
        "| layer | "
        + " | ".join(f"ms @ {n}" for n in lens)
        + " | "
        + " | ".join(f"MB @ {n}" for n in lens)
        + f" | memory vs naive softmax @ {top} |",
        "|---|" + "---:|" * (2 * len(lens) + 1),
    ]
    naive = get.get(("softmax_naive", top))
    for name in names:
        row = [ENTRIES[name].label]
        row += [_cell(get.get((name, n)), "time_ms", ".1f") for n in lens]
        row += [_cell(get.get((name, n)), "peak_mb", ".0f") for n in lens]
        ours = get.get((name, top))
        ok = ours is not None and "error" not in ours and (ours.get("peak_mb") or 0) > 0
        if ok and naive and (naive.get("peak_mb") or 0) > 0 and name != "softmax_naive":
            ratio = naive["peak_mb"] / ours["peak_mb"]
            row.append(f"{ratio:.1f}× less" if ratio >= 1 else f"{1 / ratio:.1f}× more")
        else:
            row.append("")
        lines.append("| " + " | ".join(row) + " |")
    pairs = [(name, reference_of(name)) for name in names if reference_of(name) in names]
    if pairs:
        lines += [
            "",
            "Speed-up over the reference package: its time / ours within each round, median (min–max) over rounds.",
            "",
            "| ours vs reference | " + " | ".join(f"@ {n}" for n in lens) + " |",
            "|---|" + "---:|" * len(lens),
        ]
        for name, ref in pairs:
            cells = [speedup(get.get((name, n)), get.get((ref, n))) for n in lens]
            row = [s.fmt(".2f", "×") if s else "failed" for s in cells]
            lines.append(f"| {name} vs {ENTRIES[ref].package} | " + " | ".join(row) + " |")
    return "\n".join(lines) + "\n"


def plot(results: list[dict], path: Path, settings: dict) -> None:
    import matplotlib
    import matplotlib.ticker

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(11, 4.2))
    for name in dict.fromkeys(r["entry"] for r in results):
        style = "--" if ENTRIES[name].reference else "-"
        for ax, key in zip(axes, ("time_ms", "peak_mb"), strict=True):
            ok = sorted((r["seq_len"], r[key]) for r in results if r["entry"] == name and r.get(key) is not None)
            if ok:
                ax.plot([n for n, _ in ok], [max(v, 1e-3) for _, v in ok], style, marker="o", label=ENTRIES[name].label)
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
        f"one mixer layer: batch {settings.get('batch_size')}, dim {settings.get('dim')}, "
        f"{settings.get('heads')} heads, {settings.get('device')} (dashed: reference packages)",
        fontsize=9,
    )
    fig.tight_layout()
    with atomic_open(path, "wb") as handle:  # whole or absent, like every file vitlab writes
        fig.savefig(handle, dpi=120, format=Path(path).suffix.lstrip(".") or "png")
    plt.close(fig)
