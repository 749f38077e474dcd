"""`vitlab-train`, with a signal delivered at a chosen optimiser step: the fault injector of the resume tests.

    VITLAB_TEST_SIGNAL_AT=<step>:<SIGNAL> python tests/helpers/signal_at_step.py <vitlab-train overrides>

At the end of the training batch that completes optimiser step <step>, rank 0 sends <SIGNAL> — SIGKILL to its
whole process group (every DDP rank dies at once, as when a node is lost), any other signal to itself (as
`kill` or SLURM would). Nothing else differs from `vitlab-train`: the run's overrides, and so its run.json,
are the ones given, and a resumed run is a plain `vitlab-train resume=<run dir>`.
"""

from __future__ import annotations

import os
import signal
import sys
from typing import Any

import pytorch_lightning as pl

from vitlab.cli import train
from vitlab.training import components


class SignalAtStep(pl.Callback):
    """Sends `signum` at the end of the batch that completes optimiser step `step`; with `batch=True` at the
    end of the `step`-th training batch instead (inside a gradient accumulation, say); with `step=-1` at the
    first test batch (after the fit)."""

    def __init__(self, step: int, signum: int, batch: bool = False) -> None:
        self.step, self.signum, self.batch, self.sent = step, signum, batch, False

    def on_train_batch_end(self, trainer: pl.Trainer, *args: Any) -> None:
        reached = trainer.fit_loop.total_batch_idx + 1 if self.batch else trainer.global_step
        if reached == self.step and trainer.is_global_zero:
            self._send(f"{'batch' if self.batch else 'step'} {self.step}")

    def on_test_batch_start(self, trainer: pl.Trainer, *args: Any) -> None:
        if self.step == -1 and trainer.is_global_zero:
            self._send("the first test batch")

    def _send(self, where: str) -> None:
        if self.sent:
            return
        self.sent = True
        print(f"signal_at_step: {signal.Signals(self.signum).name} at {where}", file=sys.stderr, flush=True)
        if self.signum == signal.SIGKILL:
            os.killpg(os.getpgid(0), signal.SIGKILL)
        else:
            os.kill(os.getpid(), self.signum)


def main() -> None:
    step, name = os.environ["VITLAB_TEST_SIGNAL_AT"].split(":")
    injector = SignalAtStep(int(step), getattr(signal, name))
    build_trainer = components.build_trainer  # vitlab-train imports it from there when the run starts

    def with_injector(cfg: Any, extra_callbacks: list[pl.Callback] | None = None) -> pl.Trainer:
        return build_trainer(cfg, extra_callbacks=[injector, *(extra_callbacks or [])])

    components.build_trainer = with_injector
    train.main()


if __name__ == "__main__":
    main()
