"""Continue a run in its own directory: decide at start whether this attempt resumes, and wire it up.

`vitlab-train` calls `open_attempt` before training. If the run directory already belongs to this experiment
(its `run.json` holds the same overrides, up to where and how long it runs) and has a `last.ckpt`, the
attempt continues from it: `ckpt_path` points there, the W&B logger gets the run's id with
`resume="allow"`, the CSV log keeps the rows written before the checkpoint's step and TensorBoard purges the
later events. A directory holding another experiment is refused, and so is one that is not vitlab's (a sweep
job's folder holding another tool's files; `overwrite=true` moves them aside). A `last.ckpt` that cannot be
read is refused naming the newest readable checkpoint, or replaced by it with `resume.fallback=true`. The
decision is made by rank 0 and handed to the DDP processes Lightning starts through the environment, so all
ranks load the same checkpoint.
"""

from __future__ import annotations

import logging
import os
import time
from dataclasses import dataclass
from pathlib import Path

from omegaconf import DictConfig, open_dict
from pytorch_lightning.utilities import rank_zero_only

from vitlab.errors import ConfigError
from vitlab.runs.checkpoint_choice import continue_refusal, damaged_last, fallback_line
from vitlab.runs.files import results_status
from vitlab.runs.ownership import foreign_contents, move_aside, ways_out
from vitlab.runs.slurm_env import slurm_job_id
from vitlab.runs.state import (
    MAY_CHANGE_ON_RESUME,
    RunLock,
    RunState,
    checkpoint_position,
    experiment_overrides,
    last_checkpoint,
    same_experiment,
)

log = logging.getLogger("vitlab")
ENV_RESUME = "VITLAB_RESUME_FROM"  # rank 0's decision ("" = from scratch), read by ranks > 0


class RunFinished(ConfigError):
    """The run directory holds a finished run (results.json says ok): there is nothing to continue."""


@dataclass
class Attempt:
    """This process's view of the attempt: the run's state (rank 0 only) and the checkpoint to continue from."""

    run_dir: Path
    state: RunState | None
    checkpoint: Path | None
    position: dict[str, int] | None = None
    lock: RunLock | None = None
    batch_split: int = 1  # the run's micro-batch split after out-of-memory retries (run.json; docs/runs.md#retries)

    @property
    def resumed(self) -> int:
        return self.state.resumed if self.state is not None else 0

    def release(self) -> None:
        """Let another attempt into the run directory (the process ending releases it too)."""
        if self.lock is not None:
            self.lock.release()


def attempt_options(cfg: DictConfig) -> dict[str, bool]:
    """`open_attempt`'s switches from the config: `resume.fallback` and `overwrite` (true only when true)."""
    from omegaconf import OmegaConf

    return {
        "fallback": OmegaConf.select(cfg, "resume.fallback", default=False) is True,
        "overwrite": OmegaConf.select(cfg, "overwrite", default=False) is True,
    }


def open_attempt(run_dir: Path, overrides: list[str], fallback: bool = False, overwrite: bool = False) -> Attempt:
    """Record a new attempt in `run_dir/run.json` (rank 0) and find the checkpoint to continue from.

    `fallback` (`resume.fallback=true`) continues from the newest readable checkpoint when last.ckpt cannot be
    read; `overwrite` moves another tool's files in the directory aside instead of refusing them."""
    if rank_zero_only.rank != 0:
        attempt = _follow_rank_zero(run_dir)
        known = RunState.read(run_dir)  # rank 0 recorded the split before it started this process
        attempt.batch_split = known.batch_split if known is not None else 1
        return attempt
    known = RunState.read(run_dir)
    if known is None or not same_experiment(known.overrides, overrides, MAY_CHANGE_ON_RESUME):
        _claim(run_dir, overwrite, None if known is None else another_experiment(run_dir, known.overrides, overrides))
    if results_status(run_dir) == "ok":
        raise RunFinished(
            f"{run_dir} holds a finished run (results.json says ok); it is never overwritten. Start a new run "
            "(another hydra.run.dir), or one warm-started from it with ckpt_path=<its checkpoints/last.ckpt>."
        )
    lock = RunLock(run_dir)
    if not lock.acquire():
        raise ConfigError(_in_use(run_dir))
    try:
        state = RunState.read(run_dir)
        checkpoint = None
        if state is None:
            state = RunState(overrides=list(overrides))
        else:
            if not same_experiment(state.overrides, overrides, MAY_CHANGE_ON_RESUME):
                raise ConfigError(another_experiment(run_dir, state.overrides, overrides))
            checkpoint = _readable_last(run_dir, fallback)
        position = checkpoint_position(checkpoint) if checkpoint is not None else None
        resumed_from = {"checkpoint": str(checkpoint), **position} if checkpoint is not None and position else None
        state.begin(resumed_from, overrides)
        state.write(run_dir)
    except BaseException:
        lock.release()
        raise
    os.environ[ENV_RESUME] = str(checkpoint or "")
    return Attempt(run_dir, state, checkpoint, position, lock, state.batch_split)


def _claim(run_dir: Path, overwrite: bool, other_experiment: str | None) -> None:
    """A directory of another experiment, or without a readable run.json and with more than Hydra's start
    files, is refused, or its contents moved aside with `overwrite`. A single run was checked before Hydra
    wrote (vitlab.cli.run_dir_claim); this covers each job of a sweep, whose `.hydra/` Hydra has written."""
    what = other_experiment
    if what is None:
        found = foreign_contents(run_dir)
        what = None if found is None else f"hydra.run.dir={run_dir} {found}. {ways_out('hydra.sweep.dir', run_dir)}"
    if what is None:
        return
    if not overwrite:
        raise ConfigError(what)
    moved = move_aside(run_dir, keep_start_files=True)  # this job's .hydra/ stays: Hydra just wrote it
    log.warning("overwrite=true: the old contents of %s were moved to %s", run_dir, moved)


def _readable_last(run_dir: Path, fallback: bool) -> Path | None:
    """last.ckpt when it opens; else the newest readable checkpoint with `fallback` (one log line), else refused."""
    checkpoint = last_checkpoint(run_dir)
    damage = damaged_last(run_dir) if checkpoint is not None else None
    if damage is None:
        return checkpoint
    if not fallback:
        raise ConfigError(continue_refusal(damage, f"hydra.run.dir={run_dir}", run_dir))
    log.warning(fallback_line(damage))
    return damage.newest.path if damage.newest is not None else None


def _follow_rank_zero(run_dir: Path, timeout: float = 300.0) -> Attempt:
    """Ranks > 0 load what rank 0 decided: from the environment when Lightning started them, else (SLURM
    tasks, started beside rank 0) from the attempt rank 0 records in run.json for this job and restart."""
    if ENV_RESUME in os.environ:
        value = os.environ[ENV_RESUME]
        return Attempt(run_dir, None, Path(value) if value else None)
    job, restart = slurm_job_id(), os.environ.get("SLURM_RESTART_COUNT", "0")
    if job is None:  # no way to wait for rank 0: decide from the files as it does
        return Attempt(run_dir, None, last_checkpoint(run_dir) if RunState.read(run_dir) else None)
    deadline = time.time() + timeout
    while time.time() < deadline:
        state = RunState.read(run_dir)
        latest = state.attempts[-1] if state and state.attempts else {}
        if latest.get("slurm_job_id") == job and str(latest.get("slurm_restart")) == restart:
            resumed = latest.get("resumed_from")
            return Attempt(run_dir, None, Path(resumed["checkpoint"]) if resumed else None)
        time.sleep(1.0)
    raise ConfigError(
        f"rank {rank_zero_only.rank}: rank 0 recorded no attempt for SLURM job {job} (restart {restart}) in "
        f"{run_dir / 'run.json'} within {timeout:.0f} s; see rank 0's error."
    )


def _in_use(run_dir: Path) -> str:
    state = RunState.read(run_dir)
    latest = state.attempts[-1] if state and state.attempts else {}
    where = f" (started {latest.get('started')} on {latest.get('host')}, pid {latest.get('pid')})" if latest else ""
    return (
        f"{run_dir} is in use by another process{where}: a run directory has one attempt at a time. Wait for it "
        "or stop it (it saves a checkpoint on SIGTERM), then continue it with resume=<run dir>."
    )


def another_experiment(run_dir: Path, stored: list[str], given: list[str]) -> str:
    old = set(experiment_overrides(stored, MAY_CHANGE_ON_RESUME))
    new = set(experiment_overrides(given, MAY_CHANGE_ON_RESUME))
    return (
        f"hydra.run.dir={run_dir} holds another experiment: its overrides are "
        f"[{' '.join(sorted(old)) or 'none'}], these are [{' '.join(sorted(new)) or 'none'}] "
        f"(differing: {' '.join(sorted(old ^ new))}). Continue it with `vitlab-train resume={run_dir}` (its own "
        "overrides are read from the directory; only where and how long it runs may change: trainer devices, "
        "nodes, accelerator, strategy, max_epochs, logging, paths), choose another run directory, or add "
        f"overwrite=true to move its contents aside to {run_dir.name}.replaced-<time>/ next to it (nothing is deleted)."
    )


def apply_attempt(cfg: DictConfig, attempt: Attempt) -> None:
    """Point the config at the checkpoint to continue from and at the run's existing logs and W&B run, with
    the run's own micro-batch split (out-of-memory retries) applied."""
    loggers = cfg.get("logger") or {}
    split_batches(cfg, attempt.batch_split)
    with open_dict(cfg):
        if attempt.checkpoint is not None:
            cfg.ckpt_path = str(attempt.checkpoint)  # the run's own progress wins over a warm-start ckpt_path
        # the step the new attempt starts at: logs written from it on are redone (-1: nothing kept)
        keep_before = attempt.position["global_step"] if attempt.position else -1
        resuming_in_place = attempt.state is not None and len(attempt.state.attempts) > 1
        for logger in loggers.values():
            if not logger or "_target_" not in logger:
                continue
            target = str(logger["_target_"])
            if target.endswith("WandbLogger") and attempt.state is not None:
                logger.id = attempt.state.wandb_id
                logger.resume = "allow"
                if resuming_in_place and target.startswith("vitlab."):  # rewound to the checkpoint's step
                    logger.resume_step = max(keep_before, 0)
            elif target.endswith("ResumableCSVLogger") and resuming_in_place:
                logger.keep_before_step = keep_before
            elif target.endswith("TensorBoardLogger") and resuming_in_place:
                logger.purge_step = max(keep_before, 0)


# trainer keys counted in micro-batches: a split run counts `split` times as many for the same images
COUNTED_IN_BATCHES = ("trainer.limit_train_batches", "trainer.val_check_interval")


def split_batches(cfg: DictConfig, split: int) -> None:
    """`data.batch_size / split` per micro-batch and `split` times the gradient accumulation (and the trainer's
    integer batch counts): the images per optimiser step, the steps and the schedule stay the run's own."""
    from omegaconf import OmegaConf

    if split <= 1:
        return
    with open_dict(cfg):
        cfg.data.batch_size = int(cfg.data.batch_size) // split
        cfg.trainer.accumulate_grad_batches = int(cfg.trainer.get("accumulate_grad_batches") or 1) * split
        for key in COUNTED_IN_BATCHES:
            value = OmegaConf.select(cfg, key, default=None)
            if isinstance(value, int) and not isinstance(value, bool):
                OmegaConf.update(cfg, key, value * split)
