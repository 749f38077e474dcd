"""`FirstStepExit`: end a training process the moment its first step starts (what `vitlab-bench overhead` times).

It lives with training, which instantiates it from `+callbacks.first_step._target_=...`: a run loads nothing of
a layer above its own by a dotted string.
"""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any

import pytorch_lightning as pl


class FirstStepExit(pl.Callback):
    """Write the wall-clock time at which the first training step starts to `path`, then end the process at
    once (`os._exit`: no teardown, no results — only the start-up is being measured)."""

    def __init__(self, path: str) -> None:
        self.path = path

    def on_train_batch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule, batch: Any, idx: int) -> None:
        Path(self.path).write_text(repr(time.time()))
        os._exit(0)
