"""`vitlab-bench transfer`: what a transfer method costs per training step of the same frozen ViT.

Every variant is the same backbone (default `model/backbone=vit_base`, ViT-B/16 at 224 px, no weights needed)
with a different set of trainable tensors, composed from `configs/model/...` through Hydra
(`transfer.methods`: each variant's overrides, exactly what a training run would use). One step is forward +
backward + AdamW on what trains. Variants are timed round-robin (one step each per round) and summarised by
the median, so drift in the machine's speed hits all alike.

- `head_only`: the linear probe; no gradient enters the backbone.
- `reference`: the same frozen model, but the gradient flows back through every block to the input: the
  floor for any method that trains something inside the network.
- `step_scalar` / `step_channel` / `step_dynamic`: learnable Euler step sizes (overhead vs `reference`).
- `memory_ode`: frozen backbone with the memory-ODE head (vs `head_only`); `full`: full fine-tuning.
The heads are also timed alone on pooled features (`head_batch_size` rows): linear vs memory-ODE.
"""

from __future__ import annotations

import statistics
import time
from pathlib import Path

import torch
from torch import Tensor, nn

from vitlab.bench.rounds import ratios
from vitlab.errors import ConfigError
from vitlab.models.geometry import TokenGeometry, geometry_of
from vitlab.models.heads.memory_ode import MemoryODEHead
from vitlab.models.summary import param_counts
from vitlab.runs.files import write_json, write_text

BASELINE = {"step_scalar": "reference", "step_channel": "reference", "step_dynamic": "reference", "full": "reference"}
BASELINE |= {"reference": "head_only", "memory_ode": "head_only"}
INPUT_GRADIENT = "reference"  # the variant whose gradient flows back to the input image


def build_variant(name: str, opts: dict) -> nn.Module:
    """The classifier of one variant: the training config's model with `transfer.methods[name]` (weights are
    random: timing does not depend on them)."""
    from hydra.utils import instantiate

    from vitlab.compose import compose_config

    methods = opts["methods"]
    if name not in methods:
        raise ConfigError(
            f"transfer.variants: {name!r} is not a variant; allowed: {', '.join(methods)} (transfer.methods)."
        )
    base = [f"model/backbone={opts['backbone']}", "~model/stem", f"data.img_size={opts['img_size']}"]
    cfg = compose_config("train", [*base, *opts["model_overrides"], *methods[name]])
    return instantiate(cfg.model, num_classes=int(opts["num_classes"]))


def timed_train_step(model: nn.Module, optimizer: torch.optim.Optimizer, x: Tensor, y: Tensor, device: str) -> float:
    """Seconds of one forward + backward + optimiser step (synchronised on CUDA)."""
    if device.startswith("cuda"):
        torch.cuda.synchronize()
    start = time.perf_counter()
    nn.functional.cross_entropy(model(x), y).backward()
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    if device.startswith("cuda"):
        torch.cuda.synchronize()
    return time.perf_counter() - start


def measure_variants(
    models: dict[str, nn.Module], img_size: int, batch_size: int, rounds: int, untimed_rounds: int, device: str
) -> dict:
    """Step times (ms) per variant and round, round-robin over `untimed_rounds + rounds` rounds (the
    untimed ones dropped)."""
    x = torch.randn(batch_size, 3, img_size, img_size, device=device)
    y = torch.randint(0, 2, (batch_size,), device=device)
    inputs = {name: x.clone().requires_grad_(name == INPUT_GRADIENT) for name in models}
    optimizers = {
        name: torch.optim.AdamW([p for p in m.parameters() if p.requires_grad], lr=1e-4) for name, m in models.items()
    }
    times: dict[str, list[float]] = {name: [] for name in models}
    for r in range(untimed_rounds + rounds):
        for name, model in models.items():
            elapsed = timed_train_step(model, optimizers[name], inputs[name], y, device)
            if r >= untimed_rounds:
                times[name].append(1e3 * elapsed)
    return times


def measure_heads(geo: TokenGeometry, num_classes: int, rows: int, repeats: int, device: str) -> dict[str, float]:
    """Forward + backward of the head alone on the class tokens of `rows` images, in ms (median)."""
    heads = {"linear": nn.Linear(geo.dim, num_classes), "memory_ode": MemoryODEHead(geo, num_classes)}
    tokens = torch.randn(rows, geo.num_prefix_tokens + 1, geo.dim, device=device)
    out = {}
    for name, head in heads.items():
        head = head.to(device)
        run = (lambda t, h=head: h(t[:, 0])) if name == "linear" else head
        samples = []
        for _ in range(repeats + 1):
            start = time.perf_counter()
            run(tokens).sum().backward()
            if device.startswith("cuda"):
                torch.cuda.synchronize()
            samples.append(time.perf_counter() - start)
        out[name] = 1e3 * statistics.median(samples[1:])
    return out


def render_markdown(record: dict) -> str:
    """The report: step time per variant, its overhead against its baseline, and the heads alone."""
    steps, counts = record["step_ms"], record["trainable_no_head"]
    from vitlab.bench.env import header

    lines = [header(record["env"]), ""] if "env" in record else []
    lines += [
        f"Training step (forward + backward + AdamW) of {record['backbone']} at {record['img_size']} px, batch "
        f"{record['batch_size']}, {record['device']}; median of {record['rounds']} round-robin rounds; overheads are "
        "ratios within each round, median (min–max).",
        "",
        "| variant | trainable (no head) | step (ms) | vs baseline |",
        "|---|---:|---:|---|",
    ]
    per_round = record.get("step_rounds_ms", {})
    for name, ms in steps.items():
        base = BASELINE.get(name)
        rel = f"{100 * (ms / steps[base] - 1):+.1f}% vs {base}" if base in steps else "–"
        if base in per_round and name in per_round:  # the ratio within each round: median (min–max)
            r = ratios(per_round[name], per_round[base])
            rel = f"{100 * (r.median - 1):+.1f}% ({100 * (r.low - 1):+.1f} to {100 * (r.high - 1):+.1f}) vs {base}"
        lines.append(f"| {name} | {counts[name]:,} | {ms:.1f} | {rel} |")
    heads = record.get("head_ms")
    if heads:
        lines += [
            "",
            f"Heads alone, forward + backward on {record['head_batch_size']} pooled features: linear "
            f"{heads['linear']:.2f} ms, memory-ODE (10 Euler steps) {heads['memory_ode']:.2f} ms "
            f"({heads['memory_ode'] / heads['linear']:.1f}×).",
        ]
    return "\n".join(lines) + "\n"


def run(opts: dict, out_dir: Path) -> Path:
    """Build the variants, measure them, write `<out_dir>/transfer.{json,md}`; returns the .md path."""
    torch.manual_seed(0)
    models = {v: build_variant(v, opts).to(opts["device"]).train() for v in opts["variants"]}
    record = {k: opts[k] for k in ("backbone", "img_size", "batch_size", "rounds", "device", "head_batch_size")}
    record["trainable_no_head"] = {v: param_counts(m)["params/trainable_no_head"] for v, m in models.items()}
    record["step_rounds_ms"] = measure_variants(
        models,
        int(opts["img_size"]),
        int(opts["batch_size"]),
        int(opts["rounds"]),
        int(opts["untimed_rounds"]),
        opts["device"],
    )
    record["step_ms"] = {name: statistics.median(t) for name, t in record["step_rounds_ms"].items()}
    geo = geometry_of(next(iter(models.values())).backbone)
    record["head_ms"] = measure_heads(
        geo, int(opts["num_classes"]), int(opts["head_batch_size"]), int(opts["rounds"]), opts["device"]
    )
    from vitlab.bench.env import environment

    record["env"] = environment(opts["device"])
    out_dir.mkdir(parents=True, exist_ok=True)
    write_json(out_dir / "transfer.json", record)
    md = out_dir / "transfer.md"
    write_text(md, render_markdown(record))
    return md
