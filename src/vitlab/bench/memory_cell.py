"""One cell of `vitlab-bench memory` in this (fresh) process; prints one JSON line.

    python -m vitlab.bench.memory_cell '{"overrides": ["model/backbone=vit_base", "~model/stem",
        "data.img_size=224"], "batch_size": 32, "device": "cpu", "precision": "fp32", "num_classes": 1000}'

The model is composed from the training configs with the cell's overrides (what `vitlab-train` would build).
Then: the baseline (CPU: the resident-set high-water mark `ru_maxrss`; CUDA: `memory_allocated`) is read with
the model, the AdamW optimiser (no state yet) and the input batch built; one untimed warm-up training step
(forward + backward + AdamW) runs under `torch.utils.flop_counter.FlopCounterMode`, which counts its FLOPs
(matmuls, convolutions, attention; forward and backward; recomputed forwards included); then one timed step.
The peak is the high-water mark above the baseline: on the CPU over both steps (the resident-set peak never goes
down, hence one process per cell), on CUDA over the timed step (`reset_peak_memory_stats` before it). AdamW's
moments are allocated in the warm-up step, so both figures include them, as a training run's memory does.
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
        base = torch.cuda.memory_allocated(device)
    else:
        base = rss_peak_mb()
    counter = FlopCounterMode(display=False)
    with counter:
        step()  # untimed warm-up: allocates AdamW's moments, counts the step's FLOPs
    if cuda:
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats(device)
    start = time.perf_counter()
    step()
    if cuda:
        torch.cuda.synchronize()
    step_s = time.perf_counter() - start
    peak_mb = (torch.cuda.max_memory_allocated(device) - base) / 2**20 if cuda else rss_peak_mb() - base
    return {
        "peak_mb": peak_mb,
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
