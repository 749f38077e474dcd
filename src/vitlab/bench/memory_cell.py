"""One cell of `vitlab-bench memory` in this (fresh) process; prints one JSON line.

    python -m vitlab.bench.memory_cell '{"overrides": ["model/backbone=vit_base", "~model/stem",
        "data.img_size=224"], "batch_size": 32, "device": "cpu", "precision": "fp32", "num_classes": 1000}'

The model is composed from the training configs with the cell's overrides (what `vitlab-train` would build).
Then: the baseline (CPU: the resident set, CUDA: `memory_allocated`) is read with the model, the AdamW optimiser
(no state yet) and the input batch built; one untimed warm-up training step (forward + backward + AdamW) runs
under `torch.utils.flop_counter.FlopCounterMode`, which counts its FLOPs (matmuls, convolutions, attention;
forward and backward; recomputed forwards included); then the peak counter is reset (CUDA:
`reset_peak_memory_stats`; CPU: the kernel's resident-set high-water mark `VmHWM`, reset through
`/proc/self/clear_refs`) and one timed step runs. The peak is the high-water mark of the timed step above the
baseline, on both devices: it includes AdamW's moments and the gradients (allocated in the warm-up step), as a
training run's memory does. Where the kernel refuses the reset, the CPU peak is the process's whole
high-water mark (`ru_maxrss`, both steps) and `peak_scope` says so.

On the CPU the resident set follows the live tensors only if freed memory goes back to the kernel: glibc's
malloc raises its mmap threshold after the first large free and then keeps freed activations in its heap, where
a later step's peak and the allocator's leftovers cannot be told apart. `vitlab.bench.memory` therefore starts
each cell with `MALLOC_MMAP_THRESHOLD_` fixed (every tensor above 64 KiB is its own mapping, returned when
freed). Measured here: ViT-S/16, batch 16, checkpointing off/on: 729/217 MB above a post-warm-up baseline with
glibc's default, 831/91 MB with the threshold fixed (docs/performance.md).
"""

from __future__ import annotations

import json
import resource
import sys
import time
from contextlib import nullcontext
from typing import Any

import torch
from torch import nn

PRECISIONS = ("fp32", "bf16-mixed")


def rss_peak_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: KiB


def _status_mb(field: str) -> float | None:
    """`VmRSS` / `VmHWM` of this process from /proc/self/status, in MB (None where there is no such file)."""
    try:
        for line in open("/proc/self/status"):  # noqa: SIM115 (a one-pass read of a pseudo-file)
            if line.startswith(f"{field}:"):
                return int(line.split()[1]) / 1024  # kB
    except OSError:
        return None
    return None


def reset_rss_peak() -> bool:
    """Reset the kernel's resident-set high-water mark (`VmHWM`) to the current resident set (Linux >= 4.0:
    writing 5 to /proc/self/clear_refs); False where that is refused or unavailable."""
    try:
        with open("/proc/self/clear_refs", "w") as refs:
            refs.write("5")
    except OSError:
        return False
    return _status_mb("VmHWM") is not None


def build_model(overrides: list[str], num_classes: int) -> tuple[nn.Module, int]:
    """The classifier the training configs compose with `overrides`, and its image size (`data.img_size`)."""
    from hydra.utils import instantiate

    from vitlab.compose import compose_config

    cfg = compose_config("train", overrides)
    return instantiate(cfg.model, num_classes=num_classes), int(cfg.data.img_size)


def measure_cell(spec: dict[str, Any]) -> dict[str, Any]:
    """Peak memory above the baseline (MB), the timed step (s) and the FLOPs of one training step."""
    from torch.utils.flop_counter import FlopCounterMode

    device, precision, batch = str(spec["device"]), str(spec["precision"]), int(spec["batch_size"])
    cuda = device.startswith("cuda")
    torch.manual_seed(0)
    model, img_size = build_model(list(spec["overrides"]), int(spec["num_classes"]))
    model = model.to(device).train()
    trainable = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(trainable, lr=1e-4)
    x = torch.randn(batch, 3, img_size, img_size, device=device)
    y = torch.randint(0, int(spec["num_classes"]), (batch,), device=device)
    autocast = torch.autocast("cuda", dtype=torch.bfloat16) if precision == "bf16-mixed" else nullcontext()

    def step() -> None:
        with autocast:
            loss = nn.functional.cross_entropy(model(x), y)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    if cuda:
        torch.cuda.synchronize()
        base = torch.cuda.memory_allocated(device) / 2**20
    else:
        base = _status_mb("VmRSS") or rss_peak_mb()
    counter = FlopCounterMode(display=False)
    with counter:
        step()  # untimed warm-up: allocates AdamW's moments, counts the step's FLOPs
    scope = "timed step"
    if cuda:
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats(device)
    elif not reset_rss_peak():
        scope, base = "both steps", rss_peak_mb()  # ru_maxrss never goes down: the whole process's peak
    start = time.perf_counter()
    step()
    if cuda:
        torch.cuda.synchronize()
    step_s = time.perf_counter() - start
    if cuda:
        peak_mb = torch.cuda.max_memory_allocated(device) / 2**20 - base
    else:
        peak_mb = (_status_mb("VmHWM") if scope == "timed step" else rss_peak_mb()) - base
    return {
        "peak_mb": peak_mb,
        "peak_scope": scope,
        "step_s": step_s,
        "flops": int(counter.get_total_flops()),
        "img_size": img_size,
        "params": sum(p.numel() for p in model.parameters()),
        "trainable": sum(p.numel() for p in trainable),
        "torch_threads": torch.get_num_threads(),
    }


def main(argv: list[str] | None = None) -> None:
    spec = json.loads((argv if argv is not None else sys.argv[1:])[0])
    print(json.dumps(measure_cell(spec)))
    sys.stdout.flush()


if __name__ == "__main__":
    main()
