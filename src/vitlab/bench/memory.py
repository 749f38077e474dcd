"""`vitlab-bench memory`: peak training memory with and without activation checkpointing, and achieved FLOP/s.

Every entry of `memory.entries` (configs/bench.yaml) is a list of overrides of the training configs (default
`model/backbone=vit_base`, ViT-B/16 at 224 px); each runs with `model.grad_checkpointing=false` and `=true`.
One cell = one entry × one setting = one fresh process (`vitlab.bench.memory_cell`; on the CPU with glibc's mmap
threshold fixed, so that the resident set follows the live tensors). Cells run in interleaved rounds: round r runs
every cell once, in the same order, so a slow minute hits all alike; a checkpointing ratio (on / off, peak and step
time) is computed within each round and summarised as median (min–max) over rounds (vitlab.bench.rounds). Achieved
FLOP/s = the step's FLOPs (FlopCounterMode) / its measured time; MFU = that / the device's peak
(vitlab.bench.peak_flops). Writes `<out_dir>/memory.{md,json}`; see docs/performance.md.
"""

from __future__ import annotations

import json
import logging
import os
import statistics
import sys
from pathlib import Path
from typing import Any

from vitlab.bench.json_process import run_json_process
from vitlab.bench.memory_cell import PRECISIONS
from vitlab.bench.rounds import MIN_ROUNDS, Spread, ratios
from vitlab.errors import ConfigError
from vitlab.runs.files import write_json, write_text

log = logging.getLogger("vitlab")
SETTINGS = (False, True)  # model.grad_checkpointing of a cell: off, then on
MMAP_THRESHOLD = 64 * 1024  # bytes: every allocation above it is a mapping of its own, returned when freed
GOAL_PEAK, GOAL_TIME = 0.5, 1.4  # checkpointing's target: <= 0.5x the peak at <= 1.4x the step time


def check_options(opts: dict[str, Any]) -> list[str]:
    """The entries to run (`memory.only`, or all of `memory.entries`); ConfigError for a bad setting."""
    entries = opts.get("entries") or {}
    if not isinstance(entries, dict) or not entries:
        raise ConfigError("memory.entries must map each entry's name to a list of overrides, e.g. {stock: [...]}.")
    only = list(opts.get("only") or entries)
    unknown = [name for name in only if name not in entries]
    if unknown:
        raise ConfigError(f"memory.only: {unknown} are not entries; allowed: {', '.join(entries)} (memory.entries).")
    if opts["precision"] not in PRECISIONS:
        raise ConfigError(f"memory.precision={opts['precision']!r}; allowed: {', '.join(PRECISIONS)}.")
    if opts["precision"] != "fp32" and not str(opts["device"]).startswith("cuda"):
        raise ConfigError("memory.precision=bf16-mixed runs under CUDA autocast: set memory.device=cuda, or fp32.")
    if int(opts["rounds"]) < 1 or int(opts["batch_size"]) < 1:
        raise ConfigError("memory.rounds and memory.batch_size must be >= 1.")
    return only


def cell_overrides(opts: dict[str, Any], entry: str, checkpointing: bool) -> list[str]:
    """The training-config overrides of one cell: `data.img_size` from `memory.img_size` unless the entry sets
    it (the default model at its digits size), the entry's own, the shared ones, the checkpointing switch."""
    own = list(opts["entries"][entry])
    size = [] if any(o.startswith("data.img_size=") for o in own) else [f"data.img_size={opts['img_size']}"]
    flag = f"model.grad_checkpointing={'true' if checkpointing else 'false'}"
    return [*size, *own, *opts.get("model_overrides", []), flag]


def run_cell(opts: dict[str, Any], entry: str, checkpointing: bool) -> dict[str, Any]:
    spec = {k: opts[k] for k in ("batch_size", "device", "precision", "num_classes")}
    spec["overrides"] = cell_overrides(opts, entry, checkpointing)
    cmd = [sys.executable, "-m", "vitlab.bench.memory_cell", json.dumps(spec)]
    # freed tensors go back to the kernel, so the CPU resident set follows live memory (vitlab.bench.memory_cell)
    env = {**os.environ, "MALLOC_MMAP_THRESHOLD_": str(MMAP_THRESHOLD)}
    return run_json_process(cmd, int(opts["timeout_s"]), env=env)


def summarise(entries: list[str], samples: dict[str, dict[str, list[dict]]], batch_size: int, peak: float | None):
    """Per cell: peak MB and step time over rounds; per entry: the on/off ratios within each round. `samples`:
    entry -> "off"/"on" -> one measurement per round (a dict with `error` when that process failed)."""
    cells, pairs = [], []
    for entry in entries:
        model_flops = None
        for key in ("off", "on"):
            rows = samples[entry][key]
            ok = [r for r in rows if "error" not in r]
            if not ok:
                cells.append({"entry": entry, "checkpointing": key, "error": rows[0]["error"] if rows else "not run"})
                continue
            peak_mb = Spread.of([r["peak_mb"] for r in ok])
            step = Spread.of([r["step_s"] for r in ok])
            flops = ok[0]["flops"]
            model_flops = model_flops or flops  # the off cell's count: no recomputed forward
            achieved = model_flops / step.median
            cells.append(
                {
                    "entry": entry,
                    "checkpointing": key,
                    "peak_mb": peak_mb.as_dict(),
                    "mb_per_image": peak_mb.median / batch_size,
                    "step_s": step.as_dict(),
                    "flops": flops,
                    "model_flops": model_flops,
                    "achieved_flops_s": achieved,
                    "mfu": achieved / peak if peak else None,
                    "img_size": ok[0]["img_size"],
                    "trainable": ok[0]["trainable"],
                    "failed_rounds": len(rows) - len(ok),
                }
            )
        off, on = samples[entry]["off"], samples[entry]["on"]
        both = [(a, b) for a, b in zip(off, on, strict=True) if "error" not in a and "error" not in b]
        if both:
            peak_ratio = ratios([b["peak_mb"] for _, b in both], [a["peak_mb"] for a, _ in both])
            time_ratio = ratios([b["step_s"] for _, b in both], [a["step_s"] for a, _ in both])
            goal = peak_ratio.median <= GOAL_PEAK and time_ratio.median <= GOAL_TIME
            pairs.append({"entry": entry, "peak_ratio": peak_ratio.as_dict(), "time_ratio": time_ratio.as_dict()})
            pairs[-1]["goal_met"] = goal
    return cells, pairs


def _spread(d: dict[str, float], spec: str, unit: str = "") -> str:
    return Spread(d["median"], d["min"], d["max"]).fmt(spec, unit)


def render_markdown(record: dict[str, Any], header: str = "") -> str:
    s = record["settings"]
    rounds = int(s["rounds"])
    few = f" Fewer than {MIN_ROUNDS} rounds: indicative only." if rounds < MIN_ROUNDS else ""
    where = (
        "peak MB: `torch.cuda.max_memory_allocated` over the timed step above `memory_allocated` after building"
        if str(s["device"]).startswith("cuda")
        else "peak MB: the resident-set high-water mark of the timed step (`VmHWM`, reset after the warm-up step; "
        "glibc's mmap threshold fixed at 64 KiB so freed tensors leave the resident set) above the resident set "
        "after building the model, the AdamW optimiser (its moments come in the warm-up step and count) and the "
        "input batch"
    )
    lines = [header, ""] if header else []
    lines += [
        f"One training step (forward + backward + AdamW) after an untimed warm-up step, batch {s['batch_size']}, "
        f"{s['precision']}, device `{s['device']}`; one fresh process per cell, {rounds} interleaved round(s); "
        f"{where}. Step time and peak: median (min–max) over rounds.{few}",
        "",
        "| entry | checkpointing | peak MB | MB / image | step s | GFLOP / step | achieved GFLOP/s | MFU |",
        "|---|---|---:|---:|---:|---:|---:|---:|",
    ]
    for c in record["cells"]:
        if "error" in c:
            lines.append(f"| {c['entry']} | {c['checkpointing']} | failed: {c['error']} | | | | | |")
            continue
        mfu = f"{100 * c['mfu']:.1f} %" if c["mfu"] is not None else "n/a"
        lines.append(
            f"| {c['entry']} @ {c['img_size']} px | {c['checkpointing']} | {_spread(c['peak_mb'], '.0f')} | "
            f"{c['mb_per_image']:.1f} | {_spread(c['step_s'], '.2f')} | {c['flops'] / 1e9:.1f} | "
            f"{c['achieved_flops_s'] / 1e9:.1f} | {mfu} |"
        )
    lines += [
        "",
        f"Checkpointing on / off, per round then median (min–max); goal: peak ≤ {GOAL_PEAK}× at step time ≤ "
        f"{GOAL_TIME}×.",
        "",
        "| entry | peak on / off | step time on / off | goal met |",
        "|---|---:|---:|---|",
    ]
    for p in record["pairs"]:
        goal = "yes" if p["goal_met"] else "no"
        lines.append(
            f"| {p['entry']} | {_spread(p['peak_ratio'], '.2f', '×')} | {_spread(p['time_ratio'], '.2f', '×')} | "
            f"{goal} |"
        )
    lines += [
        "",
        "GFLOP / step: `torch.utils.flop_counter.FlopCounterMode` over the warm-up step (matmuls, convolutions, "
        "attention, forward and backward; with checkpointing it includes the recomputed forward). Achieved "
        "FLOP/s and MFU use the model's FLOPs (the count without checkpointing) / the step time; MFU divides by "
        f"the peak: {record['peak_basis']}.",
    ]
    return "\n".join(lines) + "\n"


def run(opts: dict[str, Any], out_dir: Path) -> Path:
    """Run every cell in interleaved rounds, write `<out_dir>/memory.{json,md}`; returns the .md path."""
    from vitlab.bench.env import environment, header
    from vitlab.bench.peak_flops import device_peak

    entries = check_options(opts)
    device = str(opts["device"])
    env = environment(device)
    dtype = "bf16" if opts["precision"] == "bf16-mixed" else "fp32"
    samples: dict[str, dict[str, list[dict]]] = {e: {"off": [], "on": []} for e in entries}
    total, done = int(opts["rounds"]) * len(entries) * len(SETTINGS), 0
    for r in range(int(opts["rounds"])):
        for entry in entries:
            for checkpointing in SETTINGS:
                result = run_cell(opts, entry, checkpointing)
                samples[entry]["on" if checkpointing else "off"].append(result)
                done += 1
                text = result.get("error") or f"peak {result['peak_mb']:.0f} MB, step {result['step_s']:.2f} s"
                print(f"memory [{done}/{total}] round {r + 1} {entry} checkpointing={checkpointing}: {text}",
                      file=sys.stderr, flush=True)  # fmt: skip
    threads = [c["torch_threads"] for rows in samples.values() for c in rows["off"] + rows["on"] if "error" not in c]
    peak = device_peak(device, dtype, int(opts["fma_units"]), threads=int(statistics.median(threads or [0])) or None)
    cells, pairs = summarise(entries, samples, int(opts["batch_size"]), peak.flops)
    settings = {k: opts[k] for k in ("batch_size", "img_size", "rounds", "device", "precision", "fma_units")}
    record = {"settings": settings, "env": env, "peak_flops": peak.flops, "peak_basis": peak.basis}
    record |= {"cells": cells, "pairs": pairs, "samples": samples}
    out_dir.mkdir(parents=True, exist_ok=True)
    write_json(out_dir / "memory.json", record)
    md = out_dir / "memory.md"
    write_text(md, render_markdown(record, header(env)))
    return md
