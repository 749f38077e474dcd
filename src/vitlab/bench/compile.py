"""`vitlab-bench compile`: training img/s of one model with and without `torch.compile` (`module.compile`).

Two copies of the model with the same initial weights; the compiled one is compiled the way
`ClassificationModule` does it (`model.compile()`, in place), and its first step — where the compilation
happens — is timed on its own. Then both train in interleaved rounds of `steps` steps each (forward, loss,
backward, AdamW), so the speed-up is the per-round ratio. Compilation pays off only when the run is longer
than compile time / time saved per step; the report gives that break-even step count.
"""

from __future__ import annotations

import copy
import statistics
import time
from pathlib import Path
from typing import Any

import torch
from torch import nn

from vitlab.bench.rounds import Spread, interleave, ratios
from vitlab.runs.files import write_json, write_text


def _train_steps(model: nn.Module, optimizer: torch.optim.Optimizer, x: torch.Tensor, y: torch.Tensor, n: int) -> float:
    """Seconds for `n` training steps (synchronised on CUDA)."""
    cuda = x.is_cuda
    if cuda:
        torch.cuda.synchronize()
    start = time.perf_counter()
    for _ in range(n):
        nn.functional.cross_entropy(model(x), y).backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
    if cuda:
        torch.cuda.synchronize()
    return time.perf_counter() - start


def measure_compile(
    model: nn.Module, img_size: int, batch_size: int, rounds: int, steps: int, device: str, backend: str = "inductor"
) -> dict[str, Any]:
    eager = model.to(device).train()
    compiled = copy.deepcopy(eager)
    compiled.compile(backend=backend)
    x = torch.randn(batch_size, 3, img_size, img_size, device=device)
    y = torch.randint(0, 2, (batch_size,), device=device)
    opts = {name: torch.optim.AdamW(m.parameters(), lr=1e-4) for name, m in (("eager", eager), ("compiled", compiled))}
    compile_s = _train_steps(compiled, opts["compiled"], x, y, 1)  # compiles forward and backward
    samples = interleave(
        {
            "eager": lambda: _train_steps(eager, opts["eager"], x, y, steps),
            "compiled": lambda: _train_steps(compiled, opts["compiled"], x, y, steps),
        },
        rounds=rounds,
        untimed_rounds=1,
    )
    per_step = {name: statistics.median(s) / steps for name, s in samples.items()}
    saved = per_step["eager"] - per_step["compiled"]
    return {
        "eager_img_s": Spread.of([batch_size * steps / t for t in samples["eager"]]),
        "compiled_img_s": Spread.of([batch_size * steps / t for t in samples["compiled"]]),
        "speedup": ratios(samples["eager"], samples["compiled"]),
        "compile_s": compile_s,
        "break_even_steps": round(compile_s / saved) if saved > 0 else None,
        "batch_size": batch_size,
        "backend": backend,
    }


def render_markdown(record: dict[str, Any], name: str, img_size: int, rounds: int, device: str, header: str) -> str:
    even = record["break_even_steps"]
    pays = f"pays off after ~{even:,} steps" if even else "never pays off here (not faster per step)"
    return (
        f"{header}\n\n"
        f"`torch.compile` (backend {record['backend']}) on {name} at {img_size} px, batch {record['batch_size']}, "
        f"{device}; training img/s, median (min–max) of {rounds} interleaved rounds:\n\n"
        "| model | eager img/s | compiled img/s | speed-up (per round) | compile time | break-even |\n"
        "|---|---:|---:|---:|---:|---|\n"
        f"| {name} | {record['eager_img_s'].fmt('.1f')} | {record['compiled_img_s'].fmt('.1f')} | "
        f"{record['speedup'].fmt('.2f', '×')} | {record['compile_s']:.0f} s | {pays} |\n"
    )


def run(cfg: Any, out_dir: Path) -> Path:
    """`vitlab-bench compile`: the bench config's model, `<out_dir>/compile.{json,md}`; returns the .md path."""

    from hydra.core.hydra_config import HydraConfig
    from hydra.utils import instantiate

    from vitlab.bench.env import environment, header

    opts = cfg.compile
    device = str(opts.device)
    torch.manual_seed(0)
    model = instantiate(cfg.model, num_classes=int(opts.num_classes))
    img_size, rounds = int(cfg.data.img_size), int(opts.rounds)
    record = measure_compile(model, img_size, int(opts.batch_size), rounds, int(opts.steps), device, str(opts.backend))
    name = HydraConfig.get().runtime.choices.get("model", "model") if HydraConfig.initialized() else "model"
    env = environment(device)
    out_dir.mkdir(parents=True, exist_ok=True)
    saved = {k: v.as_dict() if isinstance(v, Spread) else v for k, v in record.items()}
    write_json(out_dir / "compile.json", {"env": env, "model": name, **saved})
    md = out_dir / "compile.md"
    write_text(md, render_markdown(record, name, img_size, rounds, device, header(env)))
    return md
