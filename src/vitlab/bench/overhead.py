"""`vitlab-bench overhead`: what vitlab costs beyond the libraries it stands on.

Start-up: interleaved rounds of fresh processes, each round one `python -c "import torch, pytorch_lightning,
timm"` (the floor any Lightning + timm program pays) and one real `vitlab-train` run that records the moment
its first training step starts (`FirstStepExit`, added as a callback through Hydra) and exits there. The
ratio command-to-first-step / import-time is taken within each round.

Per step: one process, the same model and the same data loader, interleaved rounds of (a) a real vitlab fit
(`build_trainer` with the run's callbacks and loggers) for a few steps and (b) a bare PyTorch loop (forward,
loss, backward, AdamW step) on the trainer's device and in its mixed precision. The step time is the interval
between consecutive step starts (the batch fetch included, the first `untimed_steps` dropped); the ratio
bare / vitlab per round is vitlab's relative throughput.
"""

from __future__ import annotations

import itertools
import logging
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pytorch_lightning as pl

from vitlab.bench.rounds import Spread, interleave, ratios
from vitlab.console import console_script
from vitlab.runs.files import write_json, write_text
from vitlab.training.first_step import FirstStepExit

IMPORT_FLOOR = "import torch, pytorch_lightning, timm"
log = logging.getLogger("vitlab")


class StepStarts(pl.Callback):
    """The `perf_counter` at the start of every training step (after the batch is fetched, as in a loop)."""

    def __init__(self) -> None:
        self.starts: list[tuple[float, float]] = []

    def on_train_batch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule, batch: Any, idx: int) -> None:
        self.starts.append(_now(pl_module.device))


def _now(device: Any) -> tuple[float, float]:
    """(wall, process CPU) clocks after the device's queued work is done (on CUDA a step's time is otherwise
    the launch's). CPU time is what a step costs even when other jobs share the cores."""
    import torch

    if torch.device(device).type == "cuda":
        torch.cuda.synchronize(device)
    return time.perf_counter(), time.process_time()


def loop_device(trainer_cfg: Any) -> tuple[Any, Any]:
    """The device and autocast dtype a Lightning trainer config trains in, for the bare loop to match."""
    import torch

    accelerator = str(trainer_cfg.get("accelerator", "auto"))
    cuda = accelerator in ("gpu", "cuda") or (accelerator == "auto" and torch.cuda.is_available())
    precision = str(trainer_cfg.get("precision", "32-true"))
    dtype = {"bf16-mixed": torch.bfloat16, "16-mixed": torch.float16}.get(precision)
    return torch.device("cuda" if cuda else "cpu"), dtype


def _children_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def time_import_floor(timeout: float) -> tuple[float, float]:
    """(wall, CPU) seconds of `python -c "import torch, pytorch_lightning, timm"`."""
    # ends with os._exit like the vitlab-train side (FirstStepExit): interpreter teardown is charged to neither
    code = f"{IMPORT_FLOOR}; import os; os._exit(0)"
    cpu, start = _children_cpu(), time.time()
    subprocess.run([sys.executable, "-c", code], check=True, timeout=timeout, capture_output=True)
    return time.time() - start, _children_cpu() - cpu


def time_to_first_step(overrides: Sequence[str], work_dir: Path, timeout: float) -> tuple[float, float]:
    """(wall, CPU) seconds from starting `vitlab-train <overrides>` to the start of its first training step (the
    process exits there, so its CPU time is the start-up's)."""
    stamp = Path(tempfile.mkstemp(dir=work_dir, suffix=".first_step")[1])
    stamp.unlink()
    extra = [
        f"paths.log_dir={work_dir}",
        f"+callbacks.first_step._target_={FirstStepExit.__module__}.FirstStepExit",
        f"+callbacks.first_step.path={stamp}",
    ]
    env = {**os.environ, "WANDB_MODE": "disabled"}
    cpu, start = _children_cpu(), time.time()
    done = subprocess.run(
        [*console_script("vitlab-train"), *overrides, *extra], timeout=timeout, capture_output=True, env=env
    )
    if not stamp.exists():
        tail = done.stderr.decode(errors="replace").strip().splitlines()[-3:]
        raise RuntimeError(f"vitlab-train never reached a training step (exit {done.returncode}): {' | '.join(tail)}")
    return float(stamp.read_text()) - start, _children_cpu() - cpu


def summarise(samples: dict[str, list[tuple[float, float]]], num: str, den: str) -> dict[str, Any]:
    """Spreads of wall and CPU time per side and the per-round ratios num/den of both."""
    out: dict[str, Any] = {"samples": samples}
    for i, clock in enumerate(("wall", "cpu")):
        a, b = [t[i] for t in samples[num]], [t[i] for t in samples[den]]
        out[f"{num}_{clock}"], out[f"{den}_{clock}"] = Spread.of(a), Spread.of(b)
        out[f"ratio_{clock}"] = ratios(a, b)
    return out


def measure_startup(overrides: Sequence[str], rounds: int, timeout: float) -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix="vitlab_overhead_") as tmp:
        samples = interleave(
            {
                "import": lambda: time_import_floor(timeout),
                "first_step": lambda: time_to_first_step(overrides, Path(tmp), timeout),
            },
            rounds=rounds,
            untimed_rounds=1,  # the first launch also warms the page cache for both
        )
    return summarise(samples, "first_step", "import")


def _step_time(stamps: list[tuple[float, float]], untimed_steps: int) -> tuple[float, float]:
    """Median (wall, CPU) interval between consecutive step starts, the first `untimed_steps` dropped."""
    walls = [b[0] - a[0] for a, b in itertools.pairwise(stamps)][untimed_steps:]
    cpus = [b[1] - a[1] for a, b in itertools.pairwise(stamps)][untimed_steps:]
    return statistics.median(walls), statistics.median(cpus)


def measure_per_step(cfg: Any, rounds: int, steps: int, untimed_steps: int) -> dict[str, Any]:
    """vitlab's fit against a bare loop on the same model and loader; `cfg`: a composed training config."""
    import torch
    from omegaconf import open_dict

    from vitlab.training.components import build_datamodule, build_module, build_trainer
    from vitlab.training.cost import CostMeter
    from vitlab.training.determinism import StepSeeding
    from vitlab.training.interrupts import InterruptGuard

    total = untimed_steps + steps + 1
    with open_dict(cfg):
        cfg.trainer.max_steps = total
        cfg.trainer.limit_val_batches = 0  # per-step cost only: the bare loop validates neither
        cfg.trainer.num_sanity_val_steps = 0
    datamodule = build_datamodule(cfg)
    module = build_module(cfg, datamodule.num_classes)
    model = module.model
    loss_fn = torch.nn.CrossEntropyLoss(label_smoothing=float(cfg.module.get("label_smoothing", 0.0)))
    lr = float(cfg.optim.get("lr", 1e-3))

    def vitlab_fit() -> float:
        starts = StepStarts()
        callbacks = [starts, CostMeter(img_size=int(cfg.data.img_size)), StepSeeding(cfg.seed), InterruptGuard()]
        trainer = build_trainer(cfg, extra_callbacks=callbacks)
        trainer.fit(module, datamodule=datamodule)
        return _step_time(starts.starts, untimed_steps)

    device, amp_dtype = loop_device(cfg.trainer)

    def bare_loop() -> float:
        """What a hand-written loop does: same device, same mixed precision (a scaler for float16)."""
        model.to(device).train()
        optimizer = torch.optim.AdamW(model.parameters(), lr=lr)
        scaler = torch.amp.GradScaler(device.type, enabled=amp_dtype == torch.float16)
        starts = []
        for x, y in datamodule.train_dataloader():
            starts.append(_now(device))
            if len(starts) > total - 1:
                break
            x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
            with torch.autocast(device.type, dtype=amp_dtype or torch.bfloat16, enabled=amp_dtype is not None):
                loss = loss_fn(model(x), y)
            scaler.scale(loss).backward()
            scaler.step(optimizer)
            scaler.update()
            optimizer.zero_grad(set_to_none=True)
        return _step_time(starts, untimed_steps)

    samples = interleave({"vitlab": vitlab_fit, "bare": bare_loop}, rounds=rounds, untimed_rounds=1)
    batch = int(cfg.data.batch_size)
    # bare time / vitlab time = vitlab img/s / bare img/s, per round
    return summarise(samples, "bare", "vitlab") | {"batch_size": batch}


def render_markdown(startup: dict | None, per_step: dict | None, rounds: int, header: str) -> str:
    """Wall-clock and CPU-time figures with their per-round ratios. On a machine shared with other jobs the
    CPU-time ratio is the trustworthy one (waiting for a core is not vitlab's cost); on an idle one they agree."""
    lines = [header, ""]
    if startup:
        lines += [
            f"Start-up, {rounds} interleaved rounds of fresh processes, median (min–max), wall clock / CPU time:",
            "",
            "| | wall (s) | CPU (s) |",
            "|---|---:|---:|",
            f'| `python -c "{IMPORT_FLOOR}"` | {startup["import_wall"].fmt(".2f")} | '
            f"{startup['import_cpu'].fmt('.2f')} |",
            f"| `vitlab-train` to its first training step | {startup['first_step_wall'].fmt('.2f')} | "
            f"{startup['first_step_cpu'].fmt('.2f')} |",
            f"| **start-up ratio** (first step / import, per round; target ≤ 1.5) | "
            f"**{startup['ratio_wall'].fmt('.2f')}** | **{startup['ratio_cpu'].fmt('.2f')}** |",
            "",
        ]
    if per_step:
        batch = per_step["batch_size"]
        lines += [
            f"Per step, same model and loader, batch {batch}, {rounds} interleaved rounds, median (min–max):",
            "",
            "| | wall img/s | CPU s/step |",
            "|---|---:|---:|",
            f"| vitlab (Lightning, the run's callbacks and loggers) | {_rate(per_step['vitlab_wall'], batch)} | "
            f"{per_step['vitlab_cpu'].fmt('.3f')} |",
            f"| bare PyTorch loop | {_rate(per_step['bare_wall'], batch)} | {per_step['bare_cpu'].fmt('.3f')} |",
            f"| **per-step ratio** (vitlab / bare throughput, per round; target ≥ 0.98) | "
            f"**{per_step['ratio_wall'].fmt('.3f')}** | **{per_step['ratio_cpu'].fmt('.3f')}** |",
            "",
        ]
    return "\n".join(lines)


def _rate(seconds: Spread, batch: int) -> str:
    """Images per second from step seconds (the slowest step is the lowest rate)."""
    return Spread(batch / seconds.median, batch / seconds.high, batch / seconds.low).fmt(".1f")


def run(cfg: Any, out_dir: Path) -> Path:
    """`vitlab-bench overhead`: both measurements, `<out_dir>/overhead.{json,md}`; returns the .md path."""

    from vitlab.bench.env import environment, header
    from vitlab.compose import compose_config

    opts = cfg.overhead
    overrides = [str(o) for o in opts.train_overrides]
    rounds, timeout = int(opts.rounds), float(opts.timeout_s)
    env = environment("cpu")
    startup = measure_startup(overrides, rounds, timeout) if opts.startup else None
    if startup:  # a long per-step part follows: the start-up figures are not held back until it ends
        log.info("start-up ratio: wall %s, CPU %s", *(startup[k].fmt(".2f") for k in ("ratio_wall", "ratio_cpu")))
    per_step = None
    if opts.per_step:
        with tempfile.TemporaryDirectory(prefix="vitlab_overhead_") as tmp:
            train_cfg = compose_config("train", [*overrides, f"paths.log_dir={tmp}", f"paths.output_dir={tmp}"])
            per_step = measure_per_step(train_cfg, rounds, int(opts.steps), int(opts.untimed_steps))
    out_dir.mkdir(parents=True, exist_ok=True)
    record = {"env": env, "train_overrides": overrides, "rounds": rounds}
    for name, part in (("startup", startup), ("per_step", per_step)):
        if part:
            record[name] = {k: v.as_dict() if isinstance(v, Spread) else v for k, v in part.items()}
    write_json(out_dir / "overhead.json", record)
    md = out_dir / "overhead.md"
    write_text(md, render_markdown(startup, per_step, rounds, header(env)))
    return md
