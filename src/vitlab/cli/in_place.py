"""Continue a run in its own directory: decide at start whether this attempt resumes, and wire it up.

`vitlab-train` calls `open_attempt` before training. If the run directory already belongs to this experiment
(its `run.json` holds the same overrides, up to the trainer and logging keys) and has a `last.ckpt`, the
attempt continues from it: `ckpt_path` points there, the W&B logger gets the run's id with
`resume="allow"`, the CSV log keeps the rows written before the checkpoint's step and TensorBoard purges the
later events. A directory holding another experiment is refused. The decision is made by rank 0 and handed
to the DDP processes Lightning starts through the environment, so all ranks load the same checkpoint.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from omegaconf import DictConfig, open_dict
from pytorch_lightning.utilities import rank_zero_only

from vitlab.cli.run_state import (
    MAY_CHANGE_ON_RESUME,
    RunState,
    checkpoint_position,
    experiment_overrides,
    last_checkpoint,
    results_status,
    same_experiment,
)
from vitlab.errors import ConfigError

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

    @property
    def resumed(self) -> int:
        return self.state.resumed if self.state is not None else 0


def open_attempt(run_dir: Path, overrides: list[str]) -> Attempt:
    """Record a new attempt in `run_dir/run.json` (rank 0) and find the checkpoint to continue from."""
    if rank_zero_only.rank != 0:
        if ENV_RESUME in os.environ:  # started by rank 0 (Lightning's DDP launcher): follow its decision
            value = os.environ[ENV_RESUME]
            return Attempt(run_dir, None, Path(value) if value else None)
        # started beside rank 0 (SLURM tasks): decide the same way, from files rank 0 does not touch yet
        known = RunState.read(run_dir) is not None
        return Attempt(run_dir, None, last_checkpoint(run_dir) if known else None)
    if results_status(run_dir) == "ok":
        raise RunFinished(
            f"{run_dir} holds a finished run (results.json says ok); it is never overwritten. Start a new run "
            "(another hydra.run.dir), or one warm-started from it with ckpt_path=<its checkpoints/last.ckpt>."
        )
    state = RunState.read(run_dir)
    checkpoint = None
    if state is None:
        state = RunState(overrides=list(overrides))
    else:
        if not same_experiment(state.overrides, overrides, MAY_CHANGE_ON_RESUME):
            raise ConfigError(_another_experiment(run_dir, state.overrides, overrides))
        checkpoint = last_checkpoint(run_dir)
    position = checkpoint_position(checkpoint) if checkpoint is not None else None
    state.begin({"checkpoint": str(checkpoint), **position} if checkpoint is not None and position else None)
    state.write(run_dir)
    os.environ[ENV_RESUME] = str(checkpoint or "")
    return Attempt(run_dir, state, checkpoint, position)


def _another_experiment(run_dir: Path, stored: list[str], given: list[str]) -> str:
    old = set(experiment_overrides(stored, MAY_CHANGE_ON_RESUME))
    new = set(experiment_overrides(given, MAY_CHANGE_ON_RESUME))
    return (
        f"hydra.run.dir={run_dir} holds another experiment: its overrides are "
        f"[{' '.join(sorted(old)) or 'none'}], these are [{' '.join(sorted(new)) or 'none'}] "
        f"(differing: {' '.join(sorted(old ^ new))}). Continue it with `vitlab-train resume={run_dir}` (its own "
        "overrides are read from the directory; only trainer and logging ones may be added), or choose another "
        "run directory."
    )


def apply_attempt(cfg: DictConfig, attempt: Attempt) -> None:
    """Point the config at the checkpoint to continue from and at the run's existing logs and W&B run."""
    loggers = cfg.get("logger") or {}
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
            elif target.endswith("ResumableCSVLogger") and resuming_in_place:
                logger.keep_before_step = keep_before
            elif target.endswith("TensorBoardLogger") and resuming_in_place:
                logger.purge_step = max(keep_before, 0)
