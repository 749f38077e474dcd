"""Instantiate what a run is made of (data, model, callbacks, loggers, trainer) from the composed config."""

from __future__ import annotations

import logging
import sys
from typing import Any

import pytorch_lightning as pl
import torch
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf
from pytorch_lightning.loggers import Logger, WandbLogger
from pytorch_lightning.utilities import rank_zero_only
from pytorch_lightning.utilities.exceptions import MisconfigurationException
from rich.console import Console
from rich.table import Table
from torch import nn

from vitlab.data.base import ImageDataModule
from vitlab.errors import ConfigError
from vitlab.extras import MissingExtra, is_installed, missing_extra_message
from vitlab.models.summary import param_counts, trainable_rows
from vitlab.runs.state import task_overrides
from vitlab.training.atomic_checkpoint_io import checkpoint_plugins
from vitlab.training.epoch_log import EpochLog
from vitlab.training.module import ClassificationModule
from vitlab.training.optim import scale_lr

log = logging.getLogger("vitlab")


def build_datamodule(cfg: DictConfig) -> ImageDataModule:
    """Instantiate `cfg.data`, prepare it (download only if asked) and build its splits now, so a missing
    data set is reported before any model is built."""
    datamodule: ImageDataModule = instantiate(cfg.data, _convert_="all")
    datamodule.seed = int(cfg.get("seed") or 0)  # the training order and augmentation draws derive from it
    if rank_zero_only.rank == 0:
        datamodule.prepare_data()
    datamodule.setup()
    return datamodule


def global_batch(cfg: DictConfig) -> int:
    """Images per optimiser step: the (global) data batch times gradient accumulation."""
    return int(cfg.data.batch_size) * int(cfg.trainer.get("accumulate_grad_batches") or 1)


def build_module(cfg: DictConfig, num_classes: int, model_cfg: DictConfig | None = None) -> ClassificationModule:
    """The model from `model_cfg` (default `cfg.model`) inside a `ClassificationModule`."""
    model: nn.Module = instantiate(model_cfg if model_cfg is not None else cfg.model, num_classes=num_classes)
    module_cfg = OmegaConf.to_container(cfg.module, resolve=True) if cfg.get("module") else {}
    return ClassificationModule(
        model=model,
        num_classes=num_classes,
        optim=scale_lr(OmegaConf.to_container(cfg.optim, resolve=True), global_batch(cfg)),
        scheduler=OmegaConf.to_container(cfg.scheduler, resolve=True) if cfg.get("scheduler") else None,
        config={**OmegaConf.to_container(cfg, resolve=True), "_overrides": task_overrides()},
        **module_cfg,
    )


def _instantiate_named(group: DictConfig | None) -> list[Any]:
    """Instantiate every entry of a `{name: {_target_: ...}}` group (callbacks, loggers); skip nulls."""
    if not group:
        return []
    return [instantiate(entry, _convert_="all") for entry in group.values() if entry and "_target_" in entry]


def build_trainer(cfg: DictConfig, extra_callbacks: list[pl.Callback] | None = None) -> pl.Trainer:
    check_accelerator(cfg)
    tensorboard = [k for k, v in (cfg.get("logger") or {}).items() if v and "TensorBoard" in str(v.get("_target_"))]
    if tensorboard and not is_installed("tensorboard"):
        raise MissingExtra(missing_extra_message("tensorboard", f"logger.{tensorboard[0]} (TensorBoard)"))
    callbacks = [*_instantiate_named(cfg.get("callbacks")), *(extra_callbacks or []), EpochLog()]
    loggers: list[Logger] = _instantiate_named(cfg.get("logger"))
    # the bar redraws one line on a terminal; in a SLURM log or a pipe it is noise (EpochLog writes lines there)
    bar = bool(cfg.trainer.get("enable_progress_bar", True)) and sys.stdout.isatty()
    try:
        plugins = checkpoint_plugins(instantiate(cfg.trainer.get("plugins"), _convert_="all"))  # atomic checkpoints
        return instantiate(
            cfg.trainer,
            callbacks=callbacks,
            logger=loggers or False,
            enable_progress_bar=bar,
            plugins=plugins,
            _convert_="all",
        )
    except Exception as exc:  # Lightning's own checks (strategy, devices): its message, as one paragraph
        cause = exc.__cause__ or exc
        if isinstance(cause, MisconfigurationException):
            raise ConfigError(f"trainer: {' '.join(str(cause).split())}") from exc
        raise


def check_accelerator(cfg: DictConfig) -> None:
    """A GPU trainer on a machine without one fails here, with the way out, not deep inside Lightning."""
    accelerator = str(cfg.trainer.get("accelerator", "auto"))
    if accelerator in ("gpu", "cuda") and not torch.cuda.is_available():
        raise ConfigError(
            f"trainer.accelerator={accelerator} but this machine has no usable CUDA GPU (torch.cuda.is_available() "
            "is False). Use trainer=cpu (or trainer.accelerator=auto), or run on a GPU node."
        )


def log_config(trainer: pl.Trainer, cfg: DictConfig, extra: dict[str, Any] | None = None) -> None:
    """Send the *resolved* config (plus `extra`, e.g. provenance) to every logger once (W&B shows real values,
    not `${...}`)."""
    resolved = {**OmegaConf.to_container(cfg, resolve=True), **(extra or {})}  # type: ignore[dict-item]
    for logger in trainer.loggers:
        logger.log_hyperparams(resolved)  # type: ignore[arg-type]


def update_wandb_summary(trainer: pl.Trainer, record: dict[str, Any]) -> None:
    """Put the `results.json` fields into the W&B run summary, so reports can be built from them."""
    for logger in trainer.loggers:
        if isinstance(logger, WandbLogger) and rank_zero_only.rank == 0:
            logger.experiment.summary.update({k: v for k, v in record.items() if k != "traceback"})


@rank_zero_only
def print_param_table(model: nn.Module) -> None:
    """A compact table of trainable and frozen parameters per module."""
    table = Table(title="parameters", show_footer=True, title_justify="left")
    counts = param_counts(model)
    table.add_column("module", footer="total")
    table.add_column("trainable", justify="right", footer=f"{counts['params/trainable']:,}")
    table.add_column("frozen", justify="right", footer=f"{counts['params/total'] - counts['params/trainable']:,}")
    for name, trainable, frozen in trainable_rows(model):
        table.add_row(name, f"{trainable:,}", f"{frozen:,}")
    Console(stderr=False).print(table)
    log.info("trainable without head: %s", f"{counts['params/trainable_no_head']:,}")
