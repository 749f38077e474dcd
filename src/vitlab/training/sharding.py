"""Whether a run's parameters are sharded over its processes (FSDP, DeepSpeed, model parallel).

Outside the wrapped forward such a module holds only its local shard, so a callback that runs the model's
parts by hand (the feature probes, the ODE pictures) would read a fraction of each weight: it refuses or skips.
"""

from __future__ import annotations

import pytorch_lightning as pl
from pytorch_lightning.strategies import DeepSpeedStrategy, FSDPStrategy, ModelParallelStrategy

SHARDING = (FSDPStrategy, DeepSpeedStrategy, ModelParallelStrategy)


def sharded_strategy(trainer: pl.Trainer) -> str | None:
    """The strategy's class name if it shards the parameters over more than one process, else None."""
    strategy = trainer.strategy
    return type(strategy).__name__ if isinstance(strategy, SHARDING) and trainer.world_size > 1 else None
