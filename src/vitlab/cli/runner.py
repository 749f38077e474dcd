"""Run one task (a training or evaluation job) with the bookkeeping every run directory needs.

`run_task` writes `config_resolved.yaml` first and `results.json` last, whatever happens in between:
`status: ok` with the metrics, `status: failed` with the error, `status: pruned` for an Optuna trial its
study's pruner stopped (the reason in `error`), or `status: interrupted` when a signal stopped the run (the
checkpoint it continues from is written; exit code 128 + signal, also in a sweep).
In a multirun a failed job is recorded and the sweep goes on; a single run exits non-zero. User errors
(`ConfigError`) are printed as one paragraph without a traceback; anything else keeps its traceback. W&B
runs are always finished. A file that cannot be written (a full disk, a quota, a read-only or failing file
system; `vitlab.errors.WriteFailed`) fails the run with one paragraph naming the file, the errno's meaning and
`vitlab-train resume=<run dir>`; when `results.json` or `run.json` cannot be written either, the record is
printed on stderr instead of being lost.
"""

from __future__ import annotations

import json
import logging
import os
import sys
import time
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any

from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from omegaconf import DictConfig, OmegaConf, open_dict, read_write
from pytorch_lightning.utilities import rank_zero_only

from vitlab.cli.in_place import ENV_RESUME, Attempt
from vitlab.cli.slurm import requeue, should_requeue
from vitlab.cli.unknown_keys import unknown_key_error
from vitlab.errors import WriteFailed, find_config_error, find_write_failure, user_message
from vitlab.provenance import git_state
from vitlab.runs.files import RESULTS_FILE, jsonable, results_status, write_json, write_text
from vitlab.runs.state import RUN_FILE, RunState, task_overrides
from vitlab.runs.wandb_login import should_force_offline
from vitlab.training.interrupts import StopNow, TrainingInterrupted, catch_interrupts, signal_name
from vitlab.training.optuna_pruning import Pruned
from vitlab.training.quiet import quiet_third_party

log = logging.getLogger("vitlab")

RESULT_KEYS = (
    "status",
    "error",
    "test/acc",
    "test/acc_top5",
    "val/acc",
    "params/total",
    "params/trainable",
    "params/trainable_no_head",
    "cost/macs_per_image",
    "cost/peak_mem_mb",
    "cost/train_img_per_s",
    "seed",
    "git_sha",
    "git_dirty",
    "overrides",
    "wall_s",
)


def is_multirun() -> bool:
    return HydraConfig.initialized() and HydraConfig.get().mode == RunMode.MULTIRUN


def pin_run_dir_for_ddp() -> None:
    """Make Lightning's DDP re-launch of this script join *this* job's directory, as a single run.

    Lightning starts ranks > 0 by re-running `sys.argv` with `hydra.run.dir=<HydraConfig.run.dir>`. In a
    multirun that would re-run the whole sweep in a fresh folder; so argv becomes this job's overrides and
    `run.dir` this job's output directory (see ashleve/lightning-hydra-template#393).
    """
    if not HydraConfig.initialized():
        return
    hydra_cfg = HydraConfig.get()
    with read_write(hydra_cfg), open_dict(hydra_cfg):
        hydra_cfg.run.dir = hydra_cfg.runtime.output_dir
    if is_multirun():
        sys.argv = [sys.argv[0], *task_overrides()]


# Set by Lightning's DDP launcher in the launching process; a later job of the same sweep must start clean.
DDP_ENV = ("MASTER_ADDR", "MASTER_PORT", "NODE_RANK", "LOCAL_RANK", "WORLD_SIZE", ENV_RESUME)


def reset_distributed(env_before: dict[str, str | None]) -> None:
    """Tear down this job's process group and DDP variables, so the next multirun job launches its own."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()
    for key, value in env_before.items():
        if value is None:
            os.environ.pop(key, None)
        else:
            os.environ[key] = value


def finish_wandb(exit_code: int) -> None:
    wandb = sys.modules.get("wandb")
    if wandb is not None and getattr(wandb, "run", None) is not None:
        wandb.finish(exit_code=exit_code)


def run_task(
    cfg: DictConfig, task: Callable[[DictConfig, dict[str, Any]], None], attempt: Attempt | None = None
) -> dict[str, Any]:
    """Run `task(cfg, record)`; `record` collects results (metrics, params, cost) as the task goes.

    `attempt` (training) makes the run directory's `run.json` part of the bookkeeping: the attempt's end is
    recorded there, `results.json` counts `resumed` attempts and the total `wall_s`, and a run directory whose
    result is not `ok` may be written again (it is the same run, continued in place).
    """
    start = time.time()
    quiet_third_party()
    out_dir = Path(cfg.paths.output_dir)
    is_rank_zero = rank_zero_only.rank == 0
    record: dict[str, Any] = {k: None for k in RESULT_KEYS}
    record.update(seed=cfg.get("seed"), overrides=task_overrides(), task=cfg.get("task_name"), **git_state())
    results_path = out_dir / RESULTS_FILE
    if is_rank_zero and results_path.exists() and (attempt is None or results_status(out_dir) == "ok"):
        raise SystemExit(f"vitlab: {results_path} already exists; refusing to overwrite a finished run.")
    exit_code, interrupt = 0, None
    env_before = {key: os.environ.get(key) for key in DDP_ENV}
    try:
        if is_rank_zero:
            out_dir.mkdir(parents=True, exist_ok=True)
            write_text(out_dir / "config_resolved.yaml", OmegaConf.to_yaml(cfg, resolve=True))
        with catch_interrupts():
            task(cfg, record)
        record["status"] = "ok"
    except TrainingInterrupted as exc:  # a signal: the checkpoint is written, the run continues later
        interrupt, exit_code = exc, exc.exit_code
        record.update(status="interrupted", error=str(exc), signal=signal_name(exc.signum))
        if exc.checkpoint is not None:
            record["checkpoint"] = str(exc.checkpoint)
        print(f"\nvitlab: {exc}\n", file=sys.stderr)
    except Pruned as exc:  # an Optuna trial stopped by its study's pruner: not a failure (docs/reproduce.md)
        record.update(status="pruned", error=str(exc))
        log.info("%s", exc)
    except Exception as exc:  # record every failure; re-raise below unless the sweep must go on
        exit_code = 1
        failure = find_write_failure(exc)  # first: a WriteFailed is a ConfigError too, but gets the way out here
        user_error = (failure.with_way_out(way_out(out_dir, attempt)) if failure else None) or (
            find_config_error(exc) or unknown_key_error(exc, cfg)
        )
        record["status"] = "failed"
        record["error"] = user_message(user_error) if user_error else f"{type(exc).__name__}: {exc}"
        if user_error is None:
            record["traceback"] = traceback.format_exc()
        report(record["error"], user_error is not None)
    except BaseException as exc:  # KeyboardInterrupt (a second Ctrl+C), Lightning's exits: on record, non-zero
        exit_code = 130 if isinstance(exc, (KeyboardInterrupt, StopNow)) else (getattr(exc, "code", None) or 1)
        record.update(status="interrupted", error=f"{type(exc).__name__}: {exc}".rstrip(": "))
        raise SystemExit(exit_code) from exc
    finally:
        if interrupt is not None:
            mark_wandb_preempting()
        finish_wandb(exit_code)
        if is_multirun():
            reset_distributed(env_before)
        wall = round(time.time() - start, 2)
        record["wall_s"] = wall
        record["run_dir"] = str(out_dir)
        if attempt is not None and attempt.state is not None:
            record["resumed"] = attempt.resumed
            record["wall_s"] = round(attempt.state.wall_s + wall, 2)  # all attempts of this run
            attempt.state.end(str(record["status"]), wall, **({"signal": record["signal"]} if interrupt else {}))
        if record["status"] == "ok":
            record.pop("error")  # only a failed run has one: a finished run's results.json holds no nulls
        if is_rank_zero and out_dir.is_dir():
            state = attempt.state if attempt is not None else None
            if write_records(out_dir, record, state, way_out(out_dir, attempt)) is not None and not exit_code:
                exit_code = 1  # the run's result is not on disk: not a success
        if attempt is not None:
            attempt.release()
    if interrupt is not None:
        if is_rank_zero and should_requeue(interrupt.signum):
            requeue(interrupt.signum)
        raise SystemExit(exit_code)  # also inside a sweep: an interrupt stops the whole process
    if exit_code and not is_multirun():
        raise SystemExit(2 if record.get("traceback") is None else 1)
    return record


def way_out(out_dir: Path, attempt: Attempt | None) -> str:
    """What to do after a write failure: a training run continues in its directory; anything else runs again."""
    if attempt is None:
        return "Free space (or fix the file system), then run the command again."
    return (
        "Nothing half-written is left under a checkpoint's name. Free space (or fix the file system), then continue "
        f"the run from its last complete checkpoint: `vitlab-train resume={out_dir}`."
    )


def write_records(out_dir: Path, record: dict[str, Any], state: RunState | None, after: str) -> WriteFailed | None:
    """Write `results.json` and `run.json` (this attempt's end), each whole; None when both are on disk.

    When one cannot be written, a run that was `ok` becomes `failed` (its result is not on disk), both are
    tried once more (a small record may fit where a checkpoint did not), and what still cannot be written is
    printed on stderr with the record: a result is never lost silently. Returns the write failure, if any."""
    failure = _try_records(out_dir, record, state)
    if failure is None:
        return None
    failure = failure.with_way_out(after)
    if record.get("status") == "ok":
        record.update(status="failed", error=str(failure))
        if state is not None and state.attempts:
            state.attempts[-1]["status"] = "failed"
        report(str(failure), user_error=True)
    still = _try_records(out_dir, record, state)
    if still is not None:
        text = json.dumps(jsonable({k: v for k, v in record.items() if k != "traceback"}), allow_nan=False)
        print(f"vitlab: {still.what()}; the run's record is here instead: {text}\n", file=sys.stderr)
    return failure


def _try_records(out_dir: Path, record: dict[str, Any], state: RunState | None) -> WriteFailed | None:
    failure = None
    writes = [(RESULTS_FILE, lambda: write_json(out_dir / RESULTS_FILE, record))]
    if state is not None:
        writes.append((RUN_FILE, lambda: state.write(out_dir)))
    for name, write in writes:
        try:
            write()
        except (WriteFailed, OSError) as exc:  # a writer's failure, or mkdir's own OSError
            failure = failure or (exc if isinstance(exc, WriteFailed) else WriteFailed(out_dir / name, exc))
    return failure


def mark_wandb_preempting() -> None:
    """Tell W&B the run stops to be resumed, not that it crashed."""
    wandb = sys.modules.get("wandb")
    run = getattr(wandb, "run", None) if wandb is not None else None
    if run is not None:
        try:
            run.mark_preempting()
        except Exception as exc:  # a logging nicety must never hide the interrupt
            log.debug("W&B mark_preempting failed: %s", exc)


def report(message: str, user_error: bool) -> None:
    """A user error as one paragraph on stderr; anything else with its traceback."""
    if user_error:
        print(f"\nvitlab: error: {message}\n", file=sys.stderr)
    else:
        traceback.print_exc()
    sys.stderr.flush()


def configure_wandb(cfg: DictConfig) -> None:
    """Run W&B offline when no API key is configured, so a run never blocks on login or network. The line that
    says so, with its `wandb sync` command, comes from the logger once the offline run exists
    (`vitlab.training.wandb_logger`, which also goes offline when the server does not answer)."""
    loggers = cfg.get("logger") or {}
    if not loggers.get("wandb"):
        return
    if should_force_offline():
        with open_dict(cfg):
            cfg.logger.wandb.offline = True
