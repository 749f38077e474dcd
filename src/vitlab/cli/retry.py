"""Retries that keep the experiment the same (docs/runs.md#retries).

A job of a sweep (`vitlab-train -m`, the Optuna sweeper's trials, the seed groups `vitlab-reproduce`
launches) that crashes is tried again, up to `sweep.retries` times, in its own run directory: from its last
checkpoint when it has one (docs/resume.md), else from the start. An out-of-memory failure is tried with half
the micro-batch and twice the gradient accumulation (`RunState.batch_split` in run.json), so the images per
optimiser step, the number of steps and the schedule stay those of the run's overrides. A user error
(`ConfigError`: bad input, a file that cannot be written) is never retried, nor is an interrupted or pruned run:
they are not crashes.
"""

from __future__ import annotations

import copy
import functools
import logging
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from omegaconf import DictConfig, OmegaConf

from vitlab.errors import ConfigError

if TYPE_CHECKING:
    from vitlab.cli.in_place import Attempt

log = logging.getLogger("vitlab")
DEFAULT_SWEEP_RETRIES = 1  # sweep.retries=null: a job of a sweep is tried once more, a single run is not


def retry_budget(cfg: DictConfig, in_sweep: bool) -> int:
    """`sweep.retries`: a whole number >= 0 (null: 1 for a job of a sweep, 0 for a single run)."""
    value = OmegaConf.select(cfg, "sweep.retries", default=None)
    if value is None:
        return DEFAULT_SWEEP_RETRIES if in_sweep else 0
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise ConfigError(
            f"sweep.retries={value!r} is not allowed: it must be a whole number >= 0 (how often a crashed or "
            "out-of-memory run is tried again; 0: never) or null (1 for a job of a sweep, 0 for a single run)."
        )
    return value


def is_out_of_memory(error: str) -> bool:
    """`torch.OutOfMemoryError` (CUDA), or a RuntimeError saying so (older torch, the CPU allocator)."""
    text = error.lower()
    return error.startswith(("OutOfMemoryError", "torch.OutOfMemoryError")) or "out of memory" in text


def next_retry(record: dict[str, Any], cfg: DictConfig, retries_done: int, budget: int) -> tuple[str, bool] | None:
    """(why, halve the micro-batch) when the failed attempt behind `record` is tried again, else None."""
    if record.get("status") != "failed" or record.get("traceback") is None:
        return None  # ok, interrupted, pruned, or a user error (ConfigError: no traceback), never retried
    if retries_done >= budget:
        log.warning("%s failed; no retry left (sweep.retries=%d)", cfg.paths.output_dir, budget)
        return None
    error = str(record.get("error") or "")
    if not is_out_of_memory(error):
        return "crash", False
    world = int(record.get("world_size") or 1)
    per_device = int(cfg.data.batch_size) // world
    if per_device < 2 or per_device % 2:
        log.warning(
            "%s ran out of memory with a micro-batch of %d per device, which cannot be halved; not retried. Use "
            "model.grad_checkpointing=true or a smaller data.batch_size with more trainer.accumulate_grad_batches.",
            cfg.paths.output_dir,
            per_device,
        )
        return None
    return "oom", True


def record_retry(run_dir: Path, why: str, halve: bool) -> int:
    """Mark the failed attempt in run.json as retried; the split every later attempt uses is returned."""
    from vitlab.runs.state import RunState

    state = RunState.read(run_dir)
    if state is None:
        return 1
    state.retry(why, halve)
    state.write(run_dir)
    return state.batch_split


def free_memory() -> None:
    """Release what the failed attempt left (its trainer, model and batches are garbage by now) before the next
    one allocates: the collector for reference cycles, then CUDA's cached blocks."""
    import gc

    import torch

    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def retry_line(run_dir: Path, why: str, halve: bool, cfg: DictConfig, attempt_no: int, budget: int) -> str:
    what = "out of memory" if why == "oom" else "crashed"
    how = ""
    if halve:
        batch, accumulate = int(cfg.data.batch_size), int(cfg.trainer.get("accumulate_grad_batches") or 1)
        how = (
            f" with data.batch_size={batch // 2} and trainer.accumulate_grad_batches={accumulate * 2} "
            "(the same images per optimiser step)"
        )
    return f"{run_dir} {what}; retry {attempt_no} of {budget}{how}, continuing in place"


def run_attempts(cfg: DictConfig, attempt: Attempt, budget: int, task: Callable[..., None]) -> dict[str, Any]:
    """Run the job (`task(cfg, record, attempt=...)`, i.e. `vitlab.cli.train.train`); while it crashes and
    `budget` retries remain, run it again in place, each attempt from a fresh copy of the job's config with the
    run's micro-batch split applied. The last attempt's record; a single run that failed for good exits
    non-zero, as without retries."""
    from pytorch_lightning.utilities import rank_zero_only

    from vitlab.cli.in_place import apply_attempt, attempt_options, open_attempt
    from vitlab.cli.runner import is_multirun, report, run_task
    from vitlab.runs.files import read_results
    from vitlab.runs.state import task_overrides

    run_dir = Path(cfg.paths.output_dir)
    budget = budget if rank_zero_only.rank == 0 else 0  # DDP ranks > 0 follow rank 0's attempts
    while True:
        job_cfg = copy.deepcopy(cfg)
        apply_attempt(job_cfg, attempt)
        done = attempt.state.retries if attempt.state is not None else 0
        try:
            record = run_task(job_cfg, functools.partial(task, attempt=attempt), attempt)
            retry = next_retry(record, job_cfg, done, budget)
        except SystemExit:  # a single run that failed: tried again when a retry is left, else exits as it was
            record = (read_results(run_dir) or {}) if budget else {}
            retry = next_retry(record, job_cfg, done, budget) if record else None
            if retry is not None and int(record.get("world_size") or 1) > 1:
                # its process group and ranks live on: only a job of a sweep has them torn down (runner)
                log.warning("%s: a single run on several processes is not retried in place; continue it with "
                            "`vitlab-train resume=%s`", run_dir, run_dir)  # fmt: skip
                retry = None
            if retry is None:
                raise
        if retry is None:
            return record
        why, halve = retry
        free_memory()
        record_retry(run_dir, why, halve)
        log.warning("%s", retry_line(run_dir, why, halve, job_cfg, done + 1, budget))
        try:
            attempt = open_attempt(run_dir, task_overrides(), **attempt_options(cfg))
        except ConfigError as exc:  # e.g. its last.ckpt cannot be read: the failure stands, as recorded
            report(str(exc), user_error=True)
            if not is_multirun():
                raise SystemExit(2) from None
            return record
