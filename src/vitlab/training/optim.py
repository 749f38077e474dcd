"""Optimiser and learning-rate schedule from config, through timm's factories.

Weight decay is applied to trainable weight matrices only: biases, norms (ndim <= 1) and every name a
module lists in `no_weight_decay()` (timm: `pos_embed`, `cls_token`; vitlab adapters: step sizes) are
exempt. Frozen parameters never reach the optimiser.

Three `optim` keys are vitlab's, not timm's: `layer_decay` and `layer_decay_min_scale` (layer-wise lr decay
by module tree, `vitlab.training.layer_decay`; timm's own grouping would put a vitlab `Classifier` in one
layer) and `fused` (`vitlab.training.optim_impl`).
"""

from __future__ import annotations

import math
import sys
from collections.abc import Mapping
from typing import Any

from timm.optim import create_optimizer_v2
from timm.scheduler import create_scheduler_v2
from timm.scheduler.scheduler import Scheduler
from torch import nn
from torch.optim import Optimizer

from vitlab.errors import ConfigError
from vitlab.training.layer_decay import check_layer_decay, layer_decay_groups
from vitlab.training.optim_impl import fused_kwargs


def scale_lr(optim: Mapping[str, Any], global_batch: int) -> dict[str, Any]:
    """Resolve `lr_base_batch` (the linear scaling rule, Goyal et al. 2017; DeiT/EIT: lr × batch / 512):
    with `lr_base_batch: B`, the learning rate becomes `lr × global_batch / B`; the key is then removed."""
    opts = dict(optim)
    base = opts.pop("lr_base_batch", None)
    if base is not None:
        if base <= 0:
            raise ConfigError(f"optim.lr_base_batch={base} must be a positive batch size (or null: no scaling).")
        opts["lr"] = float(opts["lr"]) * global_batch / base
    return opts


def build_optimizer(model: nn.Module, optim: Mapping[str, Any]) -> Optimizer:
    """`timm.optim.create_optimizer_v2` on the trainable parameters, with the decay rule above, layer-wise lr
    decay when `optim.layer_decay` is set and the implementation `optim.fused` asks for."""
    opts = dict(optim)
    decay, min_scale = opts.pop("layer_decay", None), opts.pop("layer_decay_min_scale", 0.0)
    fused = opts.pop("fused", "auto")
    check_layer_decay(decay, min_scale)
    trainable = [p for p in model.parameters() if p.requires_grad]
    if not trainable:
        raise ConfigError("the model has no trainable parameters; check model.freeze and the model/peft slot.")
    opts.update(fused_kwargs(opts.get("opt", "sgd"), fused, trainable[0].device))
    params: nn.Module | list[dict[str, Any]] = model
    if decay is not None:
        if opts.get("lr") is None:
            raise ConfigError("optim.layer_decay needs optim.lr: each layer's lr is a fraction of it.")
        no_decay = model.no_weight_decay() if callable(getattr(model, "no_weight_decay", None)) else ()
        weight_decay = float(opts.get("weight_decay", 0.0))
        params = layer_decay_groups(model, float(opts["lr"]), weight_decay, decay, min_scale, no_decay)
    try:
        return create_optimizer_v2(params, filter_bias_and_bn=True, **opts)
    except (AssertionError, TypeError, ValueError, RuntimeError) as exc:  # RuntimeError: torch's fused checks
        raise ConfigError(f"optim={dict(optim)} is not a valid timm optimiser configuration: {exc}") from exc


def build_scheduler(optimizer: Optimizer, scheduler: Mapping[str, Any], max_epochs: int, total_steps: int) -> Scheduler:
    """A timm scheduler stepped per optimiser update (warmup and decay lengths given in epochs).

    Args:
        scheduler: `create_scheduler_v2` arguments, e.g. `{sched: cosine, warmup_epochs: 5, min_lr: 1e-5}`.
        max_epochs: the trainer's epoch budget, which the schedule spans.
        total_steps: optimiser steps in the whole run (Lightning's `estimated_stepping_batches`).
    """
    if max_epochs is None or max_epochs < 1:
        raise ConfigError("scheduler needs trainer.max_epochs >= 1 (the schedule is laid out in epochs).")
    updates_per_epoch = max(1, math.ceil(total_steps / max_epochs))
    try:
        sched, _ = create_scheduler_v2(
            optimizer,
            num_epochs=max_epochs,
            step_on_epochs=False,
            updates_per_epoch=updates_per_epoch,
            **scheduler,
        )
    except TypeError as exc:
        raise ConfigError(f"scheduler={dict(scheduler)} has an unknown key: {exc}") from exc
    except (AssertionError, ValueError) as exc:  # timm's own checks (a schedule name, wsd's decay length)
        raise ConfigError(
            f"scheduler={dict(scheduler)} is not a valid timm schedule for trainer.max_epochs={max_epochs}: {exc} "
            "Allowed schedules (scheduler.sched): cosine, tanh, step, multistep, poly, wsd, rsqrt, constant."
        ) from exc
    if sched is None:
        raise ConfigError(f"scheduler.sched={scheduler.get('sched')!r} is not a timm scheduler.")
    return sched


def stepping_batches(trainer: Any, batches_per_epoch: int) -> int:
    """Optimiser steps of the whole run, as Lightning's `estimated_stepping_batches` counts them (gradient
    accumulation, `limit_train_batches` / `overfit_batches`, `max_steps`), from the number of training batches
    per epoch given by the data module, without building the training loader.

    Lightning's property builds the fit loop's loader while the optimisers are configured, before a
    checkpoint is restored, so the loader's saved position (a mid-epoch resume) would never be loaded.
    """
    if trainer.max_epochs in (None, -1):  # a step budget
        return trainer.max_steps if trainer.max_steps != -1 else sys.maxsize
    limit = trainer.overfit_batches or trainer.limit_train_batches
    batches = batches_per_epoch
    if isinstance(limit, float):
        batches = int(batches_per_epoch * limit) if limit < 1.0 else batches_per_epoch
    elif isinstance(limit, int):
        batches = min(batches_per_epoch, limit)
    steps = math.ceil(batches / trainer.accumulate_grad_batches) * max(trainer.max_epochs or 1, 1)
    return min(steps, trainer.max_steps) if trainer.max_steps != -1 else steps
