"""`vitlab-bench overhead`: what vitlab costs beyond the libraries it stands on.

Start-up: interleaved rounds of fresh processes, each round one `python -c "import torch, pytorch_lightning,
timm"` (the floor any Lightning + timm program pays) and one real `vitlab-train` run that records the moment
its first training step starts (`FirstStepExit`, added as a callback through Hydra) and exits there. The
ratio command-to-first-step / import-time is taken within each round.

Per step: one process, the same model and the same data loader, interleaved rounds of (a) a real vitlab fit
(`build_trainer` with the run's callbacks and loggers) for a few steps and (b) a bare PyTorch loop (forward,
loss, backward, AdamW step) on the trainer's device and in its mixed precision. The step time is the interval
between consecutive step starts (the batch fetch included, the first `warmup_steps` dropped); the ratio
bare / vitlab per round is vitlab's relative throughput.
"""

from __future__ import annotations

import itertools
import logging
import os
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

IMPORT_FLOOR = "import torch, pytorch_lightning, timm"
STARTUP_KEYS = ("import_s", "first_step_s", "ratio")
log = logging.getLogger("vitlab")


class FirstStepExit(pl.Callback):
    """Write the wall-clock time at which the first training step starts to `path`, then end the process at
    once (`os._exit`: no teardown, no results — only the start-up is being measured)."""

    def __init__(self, path: str) -> None:
        self.path = path

    def on_train_batch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule, batch: Any, idx: int) -> None:
        Path(self.path).write_text(repr(time.time()))
        os._exit(0)


class StepStarts(pl.Callback):
    """The `perf_counter` at the start of every training step (after the batch is fetched, as in a loop)."""

    def __init__(self) -> None:
        self.starts: list[float] = []

    def on_train_batch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule, batch: Any, idx: int) -> None:
        self.starts.append(_now(pl_module.device))


def _now(device: Any) -> float:
    """`perf_counter` after the device's queued work is done (on CUDA a step's time is otherwise the launch's)."""
    import torch

    if torch.device(device).type == "cuda":
        torch.cuda.synchronize(device)
    return time.perf_counter()


def loop_device(trainer_cfg: Any) -> tuple[Any, Any]:
    """The device and autocast dtype a Lightning trainer config trains in, for the bare loop to match."""
    import torch

    accelerator = str(trainer_cfg.get("accelerator", "auto"))
    cuda = accelerator in ("gpu", "cuda") or (accelerator == "auto" and torch.cuda.is_available())
    precision = str(trainer_cfg.get("precision", "32-true"))
    dtype = {"bf16-mixed": torch.bfloat16, "16-mixed": torch.float16}.get(precision)
    return torch.device("cuda" if cuda else "cpu"), dtype


def train_command() -> list[str]:
    """The installed `vitlab-train` next to this interpreter, else the module (a checkout without install)."""
    script = Path(sys.executable).with_name("vitlab-train")
    return [str(script)] if script.exists() else [sys.executable, "-m", "vitlab.cli.train"]


def time_import_floor(timeout: float) -> float:
    start = time.time()
    subprocess.run([sys.executable, "-c", IMPORT_FLOOR], check=True, timeout=timeout, capture_output=True)
    return time.time() - start


def time_to_first_step(overrides: Sequence[str], work_dir: Path, timeout: float) -> float:
    """Seconds from starting `vitlab-train <overrides>` to the start of its first training step."""
    stamp = Path(tempfile.mkstemp(dir=work_dir, suffix=".first_step")[1])
    stamp.unlink()
    extra = [
        f"paths.log_dir={work_dir}",
        f"+callbacks.first_step._target_={__name__}.FirstStepExit",
        f"+callbacks.first_step.path={stamp}",
    ]
    env = {**os.environ, "WANDB_MODE": "disabled"}
    start = time.time()
    done = subprocess.run([*train_command(), *overrides, *extra], timeout=timeout, capture_output=True, env=env)
    if not stamp.exists():
        tail = done.stderr.decode(errors="replace").strip().splitlines()[-3:]
        raise RuntimeError(f"vitlab-train never reached a training step (exit {done.returncode}): {' | '.join(tail)}")
    return float(stamp.read_text()) - start


def measure_startup(overrides: Sequence[str], rounds: int, timeout: float) -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix="vitlab_overhead_") as tmp:
        samples = interleave(
            {
                "import_s": lambda: time_import_floor(timeout),
                "first_step_s": lambda: time_to_first_step(overrides, Path(tmp), timeout),
            },
            rounds=rounds,
            warmup=1,  # the first launch also warms the page cache for both
        )
    return {
        "import_s": Spread.of(samples["import_s"]),
        "first_step_s": Spread.of(samples["first_step_s"]),
        "ratio": ratios(samples["first_step_s"], samples["import_s"]),
        "samples": samples,
    }


def _step_time(starts: list[float], warmup_steps: int) -> float:
    """Median interval between consecutive step starts, the first `warmup_steps` intervals dropped."""
    intervals = [b - a for a, b in itertools.pairwise(starts)][warmup_steps:]
    return statistics.median(intervals)


def measure_per_step(cfg: Any, rounds: int, steps: int, warmup_steps: int) -> dict[str, Any]:
    """vitlab's fit against a bare loop on the same model and loader; `cfg`: a composed training config."""
    import torch
    from omegaconf import open_dict

    from vitlab.training.components import build_datamodule, build_module, build_trainer
    from vitlab.training.cost import CostMeter
    from vitlab.training.determinism import StepSeeding
    from vitlab.training.interrupts import InterruptGuard

    total = warmup_steps + steps + 1
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
        return _step_time(starts.starts, warmup_steps)

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
        return _step_time(starts, warmup_steps)

    samples = interleave({"vitlab_s": vitlab_fit, "bare_s": bare_loop}, rounds=rounds, warmup=1)
    batch = int(cfg.data.batch_size)
    return {
        "vitlab_img_s": Spread.of([batch / t for t in samples["vitlab_s"]]),
        "bare_img_s": Spread.of([batch / t for t in samples["bare_s"]]),
        "ratio": ratios(samples["bare_s"], samples["vitlab_s"]),  # = vitlab img/s / bare img/s, per round
        "samples": samples,
        "batch": batch,
    }


def render_markdown(startup: dict | None, per_step: dict | None, rounds: int, header: str) -> str:
    lines = [header, ""]
    if startup:
        lines += [
            f"Start-up, {rounds} interleaved rounds of fresh processes (median, min–max):",
            "",
            f'- `python -c "{IMPORT_FLOOR}"`: {startup["import_s"].fmt(".2f", " s")}',
            f"- `vitlab-train` to its first training step: {startup['first_step_s'].fmt('.2f', ' s')}",
            f"- **start-up ratio** (first step / import, per round): **{startup['ratio'].fmt('.2f')}** (target ≤ 1.5)",
            "",
        ]
    if per_step:
        lines += [
            f"Per step, same model and loader, batch {per_step['batch']}, {rounds} interleaved rounds:",
            "",
            f"- vitlab (Lightning, the run's callbacks and loggers): {per_step['vitlab_img_s'].fmt('.1f', ' img/s')}",
            f"- bare PyTorch loop: {per_step['bare_img_s'].fmt('.1f', ' img/s')}",
            f"- **per-step ratio** (vitlab / bare, per round): **{per_step['ratio'].fmt('.3f')}** (target ≥ 0.98)",
            "",
        ]
    return "\n".join(lines)


def run(cfg: Any, out_dir: Path) -> Path:
    """`vitlab-bench overhead`: both measurements, `<out_dir>/overhead.{json,md}`; returns the .md path."""
    import json

    from vitlab.bench.compose import compose_train
    from vitlab.bench.env import environment, header

    opts = cfg.overhead
    overrides = [str(o) for o in opts.train_overrides]
    rounds, timeout = int(opts.rounds), float(opts.timeout_s)
    env = environment("cpu")
    startup = measure_startup(overrides, rounds, timeout) if opts.startup else None
    if startup:  # a long per-step part follows: the start-up figures are not held back until it ends
        log.info("start-up: import %s, first step %s, ratio %s", *(startup[k].fmt(".2f") for k in STARTUP_KEYS))
    per_step = None
    if opts.per_step:
        with tempfile.TemporaryDirectory(prefix="vitlab_overhead_") as tmp:
            train_cfg = compose_train([*overrides, f"paths.log_dir={tmp}", f"paths.output_dir={tmp}"])
            per_step = measure_per_step(train_cfg, rounds, int(opts.steps), int(opts.warmup_steps))
    out_dir.mkdir(parents=True, exist_ok=True)
    record = {"env": env, "train_overrides": overrides, "rounds": rounds}
    for name, part in (("startup", startup), ("per_step", per_step)):
        if part:
            record[name] = {k: v.as_dict() if isinstance(v, Spread) else v for k, v in part.items()}
    (out_dir / "overhead.json").write_text(json.dumps(record, indent=2))
    md = out_dir / "overhead.md"
    md.write_text(render_markdown(startup, per_step, rounds, header(env)))
    return md
