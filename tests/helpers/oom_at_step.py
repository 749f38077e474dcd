"""A fault at a chosen optimiser step, for the retry tests (docs/runs.md#retries).

Added to a run by an override (tests/ is on sys.path in pytest; a subprocess needs PYTHONPATH=tests):

    +callbacks.fault._target_=helpers.oom_at_step.FaultAtStep

and configured by the environment, so the run's overrides (its run.json) are the same in every attempt:

    VITLAB_TEST_FAULT=<oom|crash|sigkill>:<step>   at the end of the batch that completes optimiser step <step>:
        oom      raise torch.OutOfMemoryError (what CUDA raises) while the per-device micro-batch is larger than
                 VITLAB_TEST_FAULT_ABOVE (unset: whatever the micro-batch)
        crash    raise RuntimeError (a bug), in every attempt that reaches the step
        config   raise vitlab.errors.ConfigError (bad input), in every attempt that reaches the step
        sigkill  SIGKILL the process group (the host's out-of-memory killer), once: VITLAB_TEST_FAULT_ONCE=<file>
                 is created first, and no fault fires while it exists
"""

from __future__ import annotations

import os
import signal
from pathlib import Path
from typing import Any

import pytorch_lightning as pl
import torch


class FaultAtStep(pl.Callback):
    def __init__(self) -> None:
        kind, step = os.environ["VITLAB_TEST_FAULT"].split(":")
        self.kind, self.step = kind, int(step)
        above = os.environ.get("VITLAB_TEST_FAULT_ABOVE")
        self.above = int(above) if above else None
        once = os.environ.get("VITLAB_TEST_FAULT_ONCE")
        self.once = Path(once) if once else None

    def on_train_batch_end(self, trainer: pl.Trainer, pl_module: Any, outputs: Any, batch: Any, idx: int) -> None:
        if trainer.global_step != self.step or trainer.fit_loop._should_accumulate():
            return  # not the batch that completed the step
        if self.once is not None:
            if self.once.exists():
                return
            self.once.write_text(self.kind)
        micro = int(batch[0].shape[0])
        if self.kind == "oom" and (self.above is None or micro > self.above):
            raise torch.OutOfMemoryError(f"CUDA out of memory (injected at step {self.step}, micro-batch {micro})")
        if self.kind == "crash":
            raise RuntimeError(f"injected crash at step {self.step}")
        if self.kind == "config":
            from vitlab.errors import ConfigError

            raise ConfigError(f"data.root=/nowhere: injected bad input at step {self.step}")
        if self.kind == "sigkill":
            os.killpg(os.getpgid(0), signal.SIGKILL)
