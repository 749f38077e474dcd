"""Measure mixer layers at one sequence length in this (fresh) process; prints one JSON line.

    python -m vitlab.bench.worker time --entries nystrom,nystrom_ref --seq-len 4097 --rounds 9
    python -m vitlab.bench.worker memory --entries nystrom --seq-len 4097

`time`: every entry is built, checked with one forward+backward, then timed in interleaved rounds (one
forward+backward of each entry per round, same order), so drift in the machine's speed hits all alike.
`memory`: the peak of one forward+backward above the process baseline (model and input allocated), on the
CPU the peak resident set size (`ru_maxrss`), which never goes down: each entry's memory needs a process of
its own. On CUDA `time` reports it too (`max_memory_allocated`, reset per entry), and `memory` is not needed.
"""

from __future__ import annotations

import argparse
import json
import math
import resource
import sys
import time
from collections.abc import Callable

import torch

from vitlab.bench.layers import ENTRIES, build_layer
from vitlab.bench.rounds import interleave
from vitlab.models.geometry import TokenGeometry


def _rss_peak_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: KiB


def geometry(seq_len: int, dim: int, heads: int) -> TokenGeometry:
    """1 class token + a near-square grid when the length allows, else a plain sequence of patches."""
    side = math.isqrt(seq_len - 1)
    geo = TokenGeometry(dim=dim, num_heads=heads, depth=1, grid_size=(side, (seq_len - 1) // side), num_prefix_tokens=1)
    if geo.seq_len != seq_len:
        geo = TokenGeometry(dim=dim, num_heads=heads, depth=1, grid_size=(1, seq_len), num_prefix_tokens=0)
    return geo


def make_step(
    entry: str, seq_len: int, batch_size: int, dim: int, heads: int, device: str, precision: str = "fp32"
) -> Callable[[], float]:
    """A callable running one forward+backward of the entry's layer; returns its duration in ms.
    `precision=bf16-mixed`: the forward under CUDA autocast to bfloat16 (what trainer.precision=bf16-mixed runs),
    where SDPA can take its flash kernel, which fp32 inputs never reach."""
    torch.manual_seed(0)
    layer = build_layer(entry, geometry(seq_len, dim, heads)).to(device)
    x = torch.randn(batch_size, seq_len, dim, device=device, requires_grad=True)
    cuda = device.startswith("cuda")
    mixed = precision == "bf16-mixed"

    def step() -> float:
        if cuda:
            torch.cuda.synchronize()
        start = time.perf_counter()
        with torch.autocast(device_type="cuda" if cuda else "cpu", dtype=torch.bfloat16, enabled=mixed):
            out = layer(x)
        out.float().sum().backward()
        if cuda:
            torch.cuda.synchronize()
        elapsed = time.perf_counter() - start
        x.grad = None
        layer.zero_grad(set_to_none=True)
        return 1e3 * elapsed

    return step


def time_entries(
    entries: list[str],
    seq_len: int,
    batch_size: int,
    dim: int,
    heads: int,
    device: str,
    rounds: int,
    untimed_rounds: int,
    precision: str = "fp32",
) -> dict:
    steps, errors, peaks = {}, {}, {}
    cuda = device.startswith("cuda")
    for name in entries:
        try:
            step = make_step(name, seq_len, batch_size, dim, heads, device, precision)
            if cuda:  # CUDA's peak counter resets per entry: memory needs no process of its own there
                torch.cuda.synchronize()
                torch.cuda.reset_peak_memory_stats()
                base = torch.cuda.memory_allocated()
            step()  # fails here (out of memory, a missing package) rather than in the middle of the rounds
            if cuda:
                peaks[name] = (torch.cuda.max_memory_allocated() - base) / 2**20
            steps[name] = step
        except Exception as exc:
            errors[name] = f"{type(exc).__name__}: {str(exc).splitlines()[0][:160] if str(exc) else ''}"
            if cuda:
                torch.cuda.empty_cache()
    samples = interleave(steps, rounds=rounds, untimed_rounds=untimed_rounds)
    return {"seq_len": seq_len, "times_ms": samples, "errors": errors, "peak_mb": peaks}


def memory_entry(
    entry: str, seq_len: int, batch_size: int, dim: int, heads: int, device: str, precision: str = "fp32"
) -> dict:
    cuda = device.startswith("cuda")
    step = make_step(entry, seq_len, batch_size, dim, heads, device, precision)
    if cuda:
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
    else:
        base = _rss_peak_mb()
    step()
    peak_mb = (torch.cuda.max_memory_allocated() - base) / 2**20 if cuda else _rss_peak_mb() - base
    return {"entry": entry, "seq_len": seq_len, "peak_mb": peak_mb}


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("mode", choices=("time", "memory"))
    p.add_argument("--entries", required=True, help="comma-separated; memory: exactly one")
    p.add_argument("--seq-len", type=int, required=True)
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--dim", type=int, default=128)
    p.add_argument("--heads", type=int, default=4)
    p.add_argument("--device", default="cpu")
    p.add_argument("--precision", default="fp32", choices=("fp32", "bf16-mixed"))
    p.add_argument("--rounds", type=int, default=9)
    p.add_argument("--untimed-rounds", type=int, default=2)
    a = p.parse_args(argv)
    entries = a.entries.split(",")
    unknown = sorted(set(entries) - set(ENTRIES))
    if unknown:
        p.error(f"unknown entries {unknown}; allowed: {', '.join(ENTRIES)}")
    shape = (a.seq_len, a.batch_size, a.dim, a.heads, a.device)
    if a.mode == "time":
        result = time_entries(entries, *shape, rounds=a.rounds, untimed_rounds=a.untimed_rounds, precision=a.precision)
    else:
        result = memory_entry(entries[0], *shape, precision=a.precision)
    print(json.dumps(result))
    sys.stdout.flush()


if __name__ == "__main__":
    main()
