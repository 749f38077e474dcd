"""Measure one entry at one sequence length in this (fresh) process; prints one JSON line.

    python -m vitlab.bench.worker --entry nystrom --seq-len 4097 --batch 8 --dim 128 --heads 4

Peak memory is the increase over the process baseline (model and input already allocated) during the
first forward+backward: CUDA `max_memory_allocated`, or on CPU the peak resident set size (`ru_maxrss`).
Time is the median of `--repeats` forward+backward passes after `--warmup` untimed ones.
"""

from __future__ import annotations

import argparse
import json
import math
import resource
import statistics
import sys
import time

import torch

from vitlab.bench.layers import ENTRIES
from vitlab.models.geometry import TokenGeometry


def _rss_peak_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: KiB


def measure(entry: str, seq_len: int, batch: int, dim: int, heads: int, device: str, repeats: int, warmup: int) -> dict:
    torch.manual_seed(0)
    side = math.isqrt(seq_len - 1)
    geo = TokenGeometry(dim=dim, num_heads=heads, depth=1, grid_size=(side, (seq_len - 1) // side), num_prefix_tokens=1)
    if geo.seq_len != seq_len:  # a length that is not 1 + a rectangle: describe it as patches only
        geo = TokenGeometry(dim=dim, num_heads=heads, depth=1, grid_size=(1, seq_len), num_prefix_tokens=0)
    layer = ENTRIES[entry].build(geo).to(device)
    x = torch.randn(batch, seq_len, dim, device=device, requires_grad=True)

    def step() -> None:
        layer(x).sum().backward()
        x.grad = None
        layer.zero_grad(set_to_none=True)

    cuda = device.startswith("cuda")
    if cuda:
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
    else:
        base = _rss_peak_mb()
    step()
    if cuda:
        torch.cuda.synchronize()
        peak_mb = (torch.cuda.max_memory_allocated() - base) / 2**20
    else:
        peak_mb = _rss_peak_mb() - base
    for _ in range(warmup):
        step()
    times = []
    for _ in range(repeats):
        if cuda:
            torch.cuda.synchronize()
        start = time.perf_counter()
        step()
        if cuda:
            torch.cuda.synchronize()
        times.append(time.perf_counter() - start)
    return {"entry": entry, "seq_len": seq_len, "time_ms": 1000 * statistics.median(times), "peak_mb": peak_mb}


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--entry", required=True, choices=sorted(ENTRIES))
    p.add_argument("--seq-len", type=int, required=True)
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--dim", type=int, default=128)
    p.add_argument("--heads", type=int, default=4)
    p.add_argument("--device", default="cpu")
    p.add_argument("--repeats", type=int, default=7)
    p.add_argument("--warmup", type=int, default=2)
    a = p.parse_args(argv)
    result = measure(a.entry, a.seq_len, a.batch, a.dim, a.heads, a.device, a.repeats, a.warmup)
    print(json.dumps(result))
    sys.stdout.flush()


if __name__ == "__main__":
    main()
