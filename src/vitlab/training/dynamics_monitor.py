"""Log what the ODE-transfer parameters learned: the distribution of the memory-ODE head's self-inhibition a
and of the Euler step sizes h, once per training epoch (idle on models that have neither)."""

from __future__ import annotations

import pytorch_lightning as pl
import torch
from pytorch_lightning.loggers import TensorBoardLogger, WandbLogger
from torch import Tensor, nn

from vitlab.models.adapters.step_size import EulerStep
from vitlab.models.heads.memory_ode import MemoryODEHead


def learned_dynamics(model: nn.Module) -> dict[str, Tensor]:
    """Flattened a (memory-ODE heads, key `a`) and h (static step sizes, key `h`) of `model`."""
    values: dict[str, list[Tensor]] = {"a": [], "h": []}
    for module in model.modules():
        if isinstance(module, EulerStep):
            values["h"].append(module.step_size().detach().float().flatten())
        elif isinstance(module, MemoryODEHead):
            values["a"].append(module.inhibition().detach().float().flatten())
    return {k: torch.cat(v) for k, v in values.items() if v}


def summarise(values: dict[str, Tensor]) -> dict[str, float]:
    """`dynamics/a_mean`, `_std`, `_min`, `_p50`, `_max` (and the same for h)."""
    out: dict[str, float] = {}
    for name, v in values.items():
        stats = {"mean": v.mean(), "std": v.std() if v.numel() > 1 else v.new_zeros(()), "min": v.min()}
        stats |= {"p50": v.median(), "max": v.max()}
        out |= {f"dynamics/{name}_{stat}": float(x) for stat, x in stats.items()}
    return out


class DynamicsMonitor(pl.Callback):
    """Scalars to every logger; full histograms to W&B and TensorBoard when they are active."""

    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        values = learned_dynamics(pl_module)
        if not values:
            return
        pl_module.log_dict(summarise(values), on_epoch=True)
        if trainer.global_rank != 0:
            return
        for logger in trainer.loggers:
            for name, v in values.items():
                if isinstance(logger, WandbLogger):
                    import wandb

                    logger.experiment.log({f"dynamics/{name}": wandb.Histogram(v.cpu().numpy())}, commit=False)
                elif isinstance(logger, TensorBoardLogger):
                    logger.experiment.add_histogram(f"dynamics/{name}", v, trainer.global_step)
