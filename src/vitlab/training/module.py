"""`ClassificationModule`: the Lightning module that trains any vitlab model.

It owns training concerns only: the loss (cross-entropy with label smoothing; soft-target cross-entropy
under Mixup/CutMix), torchmetrics top-1/top-5 for training and validation, the optimiser and a per-step schedule.
The test stage keeps every test logit (gathered over processes) and reports what papers report from them
(`vitlab.analysis.classification_metrics`; docs/evaluation.md), optionally averaged over test-time views
(`tta`). The model is a plain `nn.Module` built from config; it is not saved in the hyper-parameters (the
resolved config is).
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pytorch_lightning as pl
import torch
from timm.data import Mixup
from timm.loss import SoftTargetCrossEntropy
from torch import Tensor, nn
from torchmetrics import MetricCollection
from torchmetrics.classification import MulticlassAccuracy

from vitlab.analysis.classification_metrics import TOP_K, classification_report
from vitlab.analysis.tta import check_tta, tta_logits
from vitlab.errors import ConfigError, NonFiniteLoss
from vitlab.models.summary import param_counts
from vitlab.training.constraints import modules_with, project_parameters, regularization_loss
from vitlab.training.layer_decay import format_table, layer_scale_table
from vitlab.training.optim import build_optimizer, build_scheduler, stepping_batches
from vitlab.training.optim_impl import implementation

Batch = tuple[Tensor, Tensor]
log = logging.getLogger("vitlab")


def accuracy_metrics(num_classes: int, prefix: str) -> MetricCollection:
    """Micro-averaged top-1 accuracy, and top-5 where there are more than 5 classes (with 5 or fewer it is 1 by
    construction, a number that says nothing)."""
    metrics = {"acc": MulticlassAccuracy(num_classes, top_k=1, average="micro")}
    if num_classes > TOP_K:
        metrics["acc_top5"] = MulticlassAccuracy(num_classes, top_k=TOP_K, average="micro")
    return MetricCollection(metrics, prefix=prefix)


class ClassificationModule(pl.LightningModule):
    """Supervised image classification.

    Args:
        model: the classifier (`vitlab.models.build.build_classifier`).
        num_classes: from the data module.
        optim: `create_optimizer_v2` arguments (`opt`, `lr`, `weight_decay`, ...).
        scheduler: `create_scheduler_v2` arguments, or None for a constant learning rate.
        label_smoothing: for the hard-label loss and inside Mixup's soft targets.
        mixup: timm `Mixup` arguments; active when `mixup_alpha` or `cutmix_alpha` is positive.
        compile: `torch.compile` the model in place (state-dict keys unchanged).
        config: the resolved run config, stored in checkpoints so `vitlab-eval` can rebuild the model.
    """

    def __init__(
        self,
        model: nn.Module,
        num_classes: int,
        optim: Mapping[str, Any],
        scheduler: Mapping[str, Any] | None = None,
        label_smoothing: float = 0.0,
        mixup: Mapping[str, Any] | None = None,
        compile: bool = False,
        config: Mapping[str, Any] | None = None,
    ) -> None:
        super().__init__()
        self.save_hyperparameters(ignore=["model"], logger=False)
        self.model = model
        mixup = dict(mixup or {})
        self.mixup = None
        if mixup.get("mixup_alpha", 0) > 0 or mixup.get("cutmix_alpha", 0) > 0:
            self.mixup = Mixup(**mixup, label_smoothing=label_smoothing, num_classes=num_classes)
        self.train_loss: nn.Module = (
            SoftTargetCrossEntropy() if self.mixup else nn.CrossEntropyLoss(label_smoothing=label_smoothing)
        )
        self.eval_loss = nn.CrossEntropyLoss()
        self.train_metrics = accuracy_metrics(num_classes, "train/")
        self.val_metrics = accuracy_metrics(num_classes, "val/")
        # the test stage: test-time views (`eval.tta`, set by the CLI), the test logits and labels of this process
        # while testing, and the full report of the last test (`vitlab.analysis.classification_metrics`)
        self._tta = "none"
        self._test_logits: list[Tensor] = []
        self._test_labels: list[Tensor] = []
        self.test_report: dict[str, Any] | None = None
        # modules that add a loss penalty or keep a parameter feasible (vitlab.training.constraints)
        self._regularized = modules_with(model, "regularization")
        self._projected = modules_with(model, "project_parameters_")
        # set by configure_optimizers: the layer-wise lr table (None: no layer decay) and the step's implementation
        self.layer_scales: list[dict[str, Any]] | None = None
        self.optimizer_implementation: str | None = None

    def forward(self, x: Tensor) -> Tensor:
        return self.model(x)

    def configure_model(self) -> None:
        # the whole model, in place (no `_orig_mod.` prefix in checkpoints). Compiling only the backbone did
        # nothing: `Classifier` calls `backbone.forward_features`, and `nn.Module.compile` wraps `__call__` only.
        if self.hparams.compile and not getattr(self, "_compiled", False):
            self.model.compile()
            self._compiled = True  # configure_model runs again for trainer.test: one wrapper is enough

    def setup(self, stage: str) -> None:
        if stage == "fit" and self.hparams.num_classes <= TOP_K:
            self._refuse_absent_top5_monitor()

    def _refuse_absent_top5_monitor(self) -> None:
        """With 5 classes or fewer no `*/acc_top5` is logged: a checkpoint or early-stopping monitor on it would
        fail after the first epoch with Lightning's traceback, a sweep on it would find no metric; one paragraph
        now instead."""
        config = self.hparams.config or {}
        watchers = [(type(c).__name__, "monitors", getattr(c, "monitor", None)) for c in self.trainer.callbacks]
        watchers += [("optimised_metric", "is", config.get(k)) for k in ("optimised_metric", "optimized_metric")]
        for who, verb, monitor in watchers:
            if isinstance(monitor, str) and monitor.endswith("/acc_top5"):
                raise ConfigError(
                    f"{who} {verb} {monitor}, but this data has {self.hparams.num_classes} "
                    f"classes and top-{TOP_K} accuracy is logged only with more than {TOP_K} (with fewer it is 1 by "
                    "construction). Monitor val/acc or val/loss instead."
                )

    def on_fit_start(self) -> None:
        ckpt = self.trainer.ckpt_path
        if ckpt and Path(ckpt).resolve().is_relative_to(Path(self.trainer.default_root_dir).resolve()):
            return  # the run continues in its own directory: the counts are logged already
        counts = param_counts(self.model)
        for logger in self.loggers:
            logger.log_metrics({k: float(v) for k, v in counts.items()}, step=0)

    def training_step(self, batch: Batch, batch_idx: int) -> Tensor:
        x, y = batch
        targets: Tensor = y
        if self.mixup is not None:
            x, targets = self.mixup(x, y)  # soft targets (B, K); metrics still use the hard labels y
        logits = self(x)
        loss = self.train_loss(logits, targets)
        self._stop_if_not_finite(loss, batch_idx)
        self.log("train/loss", loss, on_step=True, on_epoch=True, prog_bar=True)
        penalty = regularization_loss(self._regularized)
        if penalty is not None:
            self.log("train/reg_loss", penalty, on_step=True, on_epoch=True)
            loss = loss + penalty
        self.train_metrics["acc"](logits.detach(), y)
        self.log("train/acc", self.train_metrics["acc"], on_step=False, on_epoch=True, prog_bar=True)
        return loss

    def _stop_if_not_finite(self, loss: Tensor, batch_idx: int) -> None:
        """A NaN or infinite loss ends the run as failed (every rank at the same step), instead of training on
        and reporting chance accuracy as `ok`."""
        finite = bool(torch.isfinite(loss.detach()))
        trainer = self._trainer
        if trainer is not None and trainer.world_size > 1:
            finite = trainer.strategy.reduce_boolean_decision(finite, all=True)
        if finite:
            return
        where = f" at epoch {trainer.current_epoch}, step {trainer.global_step}" if trainer is not None else ""
        raise NonFiniteLoss(
            f"train/loss became {float(loss.detach()):g}{where} (batch {batch_idx}), so the run stops: the model "
            f"would be meaningless. Lower optim.lr (now {self.hparams.optim.get('lr')}), clip gradients "
            "(trainer.gradient_clip_val=1.0), or train in full precision (trainer.precision=32-true)."
        )

    def optimizer_step(self, *args: Any, **kwargs: Any) -> None:
        super().optimizer_step(*args, **kwargs)
        # right after the update (before any callback, so a checkpoint written at the step's end holds it):
        # constrained parameters stay feasible
        project_parameters(self._projected)

    def validation_step(self, batch: Batch, batch_idx: int) -> None:
        x, y = batch
        logits = self(x)
        self.log("val/loss", self.eval_loss(logits, y), on_epoch=True, sync_dist=True, prog_bar=True)
        self.val_metrics.update(logits, y)
        self.log_dict(self.val_metrics, on_step=False, on_epoch=True, prog_bar=True)

    @property
    def tta(self) -> str:
        """Test-time augmentation of the test stage: none | flip | multicrop (`vitlab.analysis.tta`)."""
        return self._tta

    @tta.setter
    def tta(self, mode: str) -> None:
        self._tta = check_tta(mode)

    def on_test_epoch_start(self) -> None:
        self._test_logits, self._test_labels, self.test_report = [], [], None

    def test_step(self, batch: Batch, batch_idx: int) -> None:
        x, y = batch
        logits = tta_logits(self, x, self._tta)  # the views' mean logits (one view without TTA)
        self.log("test/loss", self.eval_loss(logits, y), on_epoch=True, sync_dist=True)
        # kept on the CPU (float32): a 50 000 x 1000 test set is 200 MB there instead of on the accelerator
        self._test_logits.append(logits.detach().float().cpu())
        self._test_labels.append(y.detach().cpu())

    def on_test_epoch_end(self) -> None:
        """The report of the whole test set, on every process (so each logs the same numbers): top-1, top-5
        (K > 5), balanced accuracy, NLL and ECE go to the loggers and `trainer.test`'s result; the arrays stay
        in `test_report` for the CLI to write (metrics/test.json, figures)."""
        gathered = self._gathered_test_outputs()
        self._test_logits, self._test_labels = [], []
        if gathered is None:
            return
        self.test_report = classification_report(*gathered)
        for name, value in self.test_report["scalars"].items():
            # identical on every process: sync_dist only keeps Lightning from warning about an unsynced epoch value
            self.log(f"test/{name}", value, sync_dist=True)

    def _gathered_test_outputs(self) -> tuple[Tensor, Tensor] | None:
        """Every process's test logits and labels in the data set's order, each sample once; None without any.

        Under DDP, Lightning's `DistributedSampler` (no shuffle) gives rank r the samples r, r + W, r + 2W, ...
        and pads the last round with the first samples again so every rank has as many. Stacking the ranks'
        outputs sample-major restores the order 0, 1, 2, ..., and the padding is the tail past the data set's
        size, which is cut off (torchmetrics, averaging per process, counts those repeats)."""
        if not self._test_labels:
            return None
        logits, labels = torch.cat(self._test_logits), torch.cat(self._test_labels)
        world = self.trainer.world_size if self._trainer is not None else 1
        if world == 1:
            return logits, labels
        num_classes = logits.shape[1]
        logits = self.all_gather(logits.to(self.device)).transpose(0, 1).reshape(-1, num_classes).cpu()
        labels = self.all_gather(labels.to(self.device)).transpose(0, 1).reshape(-1).cpu()
        size = _test_set_size(self.trainer)
        if size is not None and size < len(labels) <= size + world - 1:  # the whole set, padded: drop the repeats
            logits, labels = logits[:size], labels[:size]
        return logits, labels

    def configure_optimizers(self) -> Any:
        optimizer = build_optimizer(self.model, self.hparams.optim)
        self._describe_optimizer(optimizer)
        if not self.hparams.scheduler:
            return optimizer
        scheduler = build_scheduler(optimizer, self.hparams.scheduler, self.trainer.max_epochs, self._total_steps())
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}

    def _describe_optimizer(self, optimizer: Any) -> None:
        """Keep what the optimiser does for results.json (`optim/layer_scales`, `optim/implementation`; read by
        vitlab-train), send the scale table to the loggers' hyper-parameters and print it once per fit."""
        self.layer_scales = layer_scale_table(optimizer)
        self.optimizer_implementation = implementation(optimizer)
        if self.layer_scales is None or self._trainer is None:
            return
        for logger in self.loggers:
            logger.log_hyperparams({"optim/layer_scales": self.layer_scales})
        if self.trainer.is_global_zero:
            optim = self.hparams.optim
            log.info(format_table(self.layer_scales, optim["layer_decay"], optim.get("layer_decay_min_scale", 0.0)))

    def _total_steps(self) -> int:
        """Optimiser steps of the run, from the data module's batch count when it knows it (see `stepping_batches`)."""
        datamodule = getattr(self.trainer, "datamodule", None)
        if datamodule is not None and hasattr(datamodule, "train_batches_per_epoch"):
            return stepping_batches(self.trainer, datamodule.train_batches_per_epoch())
        return int(self.trainer.estimated_stepping_batches)

    def lr_scheduler_step(self, scheduler: Any, metric: Any = None) -> None:
        # timm schedulers are not torch LRSchedulers: they are told the update count (per-step warmup+decay)
        scheduler.step_update(num_updates=self.global_step)

    @torch.no_grad()
    def predict_step(self, batch: Batch, batch_idx: int) -> Tensor:
        return self(batch[0]).softmax(dim=-1)


def _test_set_size(trainer: Any) -> int | None:
    """Samples of the (single) test data set, None when unknown."""
    loaders = trainer.test_dataloaders
    loader = loaders[0] if isinstance(loaders, (list, tuple)) and len(loaders) == 1 else loaders
    try:
        return len(loader.dataset)
    except (AttributeError, TypeError):
        return None
