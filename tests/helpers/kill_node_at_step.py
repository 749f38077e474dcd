"""`vitlab-train` whose process of one global rank kills itself (SIGKILL) at a chosen optimiser step: a lost node.

    VITLAB_TEST_KILL_AT=<step>:<global rank> python tests/helpers/kill_node_at_step.py <vitlab-train overrides>

At the end of the training batch that completes optimiser step <step>, the process of <global rank> sends
SIGKILL to its own process group; the other ranks are left running (blocked in their next collective), as
when one node of a job dies. Unlike tests/helpers/signal_at_step.py (rank 0 only), any rank can be the one.
"""

from __future__ import annotations

import os
import signal
import sys
from typing import Any

import pytorch_lightning as pl

from vitlab.cli import train
from vitlab.training import components


class KillAtStep(pl.Callback):
    """SIGKILL to this process group at the end of the batch that completes optimiser step `step`, on `rank`."""

    def __init__(self, step: int, rank: int) -> None:
        self.step, self.rank = step, rank

    def on_train_batch_end(self, trainer: pl.Trainer, *args: Any) -> None:
        if trainer.global_step == self.step and trainer.global_rank == self.rank:
            print(f"kill_node_at_step: SIGKILL at step {self.step} on rank {self.rank}", file=sys.stderr, flush=True)
            os.killpg(os.getpgid(0), signal.SIGKILL)


def main() -> None:
    step, rank = (int(part) for part in os.environ["VITLAB_TEST_KILL_AT"].split(":"))
    build_trainer = components.build_trainer  # vitlab-train imports it from there when the run starts

    def with_killer(cfg: Any, extra_callbacks: list[pl.Callback] | None = None) -> pl.Trainer:
        return build_trainer(cfg, extra_callbacks=[KillAtStep(step, rank), *(extra_callbacks or [])])

    components.build_trainer = with_killer
    train.main()


if __name__ == "__main__":
    main()
