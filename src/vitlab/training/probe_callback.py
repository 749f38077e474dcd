"""`callbacks=probe`: how good the backbone's frozen features are, while training and at test (docs/probes.md).

Every `every_n_epochs` epochs, after validation, and once at test, the backbone's pre-logits features
(`vitlab.analysis.features`) of (at most `max_train_samples`) training images, read through the evaluation
transform, are the reference; the validation (at test: test) images are classified from them by

- a k-NN vote (`vitlab.analysis.knn`: cosine similarity, k neighbours, votes weighted by exp(s / T) as in
  DINO, or plain votes with `weighted: false`) -> `probe/knn_acc` (validation), `test/probe_knn_acc` (test);
- a linear probe (`vitlab.analysis.linear_probe`: multinomial logistic regression with scikit-learn's
  objective, C = `linear_c`, on features L2-normalised, then centred and scaled per dimension)
  -> `probe/linear_acc`, `test/probe_linear_acc`.

The metrics go to every logger (CSV, W&B, ...) through `pl_module.log`; the test ones are part of what
`trainer.test` returns, hence of `results.json`. Training is left exactly as it was: the probe reads its own
loaders in a fixed order, draws nothing from the global generators (`rng_untouched`) and restores each
submodule's train/eval flag, so a run with the probe trains the same weights as one without, and resumes
bit-identically. Under DDP every process computes the same probe on all the images it selects (the probe's
loaders are not sharded; no process waits on another while computing), the values are averaged over the
processes when logged (they are equal) and only rank 0's loggers write.
"""

from __future__ import annotations

import logging
import random
import time
from typing import Any

import numpy as np
import pytorch_lightning as pl
import torch
from pytorch_lightning.utilities import rank_zero_only
from torch.utils.data import Dataset, Subset

from vitlab.analysis.features import eval_view, extract_features, feature_loader, rng_untouched, sample_indices
from vitlab.analysis.knn import knn_accuracy
from vitlab.analysis.linear_probe import fit_linear_probe, standardise
from vitlab.errors import ConfigError
from vitlab.training.sharding import sharded_strategy

log = logging.getLogger("vitlab")


class FeatureProbe(pl.Callback):
    """k-NN and linear probes of the frozen features; the options are those of configs/callbacks/probe.yaml.

    Args:
        every_n_epochs: probe after the validation of every n-th epoch (n >= 1); the test probe always runs.
        k: neighbours that vote (>= 1; all references when there are fewer).
        temperature: T of the weighted votes exp(similarity / T) (> 0).
        weighted: DINO's weighted votes (true) or one vote per neighbour (false).
        max_train_samples: reference images drawn from the training split (a fixed draw); null: all of them.
        max_eval_samples: validation/test images classified (a fixed draw); null: all of them.
        linear: also fit and score the linear probe.
        linear_c: the linear probe's inverse regularisation strength C (scikit-learn's; > 0).
    """

    def __init__(
        self,
        every_n_epochs: int = 1,
        k: int = 20,
        temperature: float = 0.07,
        weighted: bool = True,
        max_train_samples: int | None = 10000,
        max_eval_samples: int | None = None,
        linear: bool = True,
        linear_c: float = 1.0,
    ) -> None:
        check_probe_options(every_n_epochs, k, temperature, max_train_samples, max_eval_samples, linear_c)
        self.every_n_epochs, self.k, self.temperature, self.weighted = every_n_epochs, k, temperature, weighted
        self.max_train_samples, self.max_eval_samples = max_train_samples, max_eval_samples
        self.linear, self.linear_c = linear, linear_c
        self._probed_epoch: int | None = None  # one probe per epoch, however often validation runs in it

    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        strategy = sharded_strategy(trainer)
        if strategy is not None:
            raise ConfigError(
                f"callbacks=probe cannot run under {strategy} with {trainer.world_size} processes: the probe runs the "
                "backbone outside the wrapped forward, where each process holds only a shard of the weights. Probe "
                "with trainer=ddp (or one device), or afterwards with vitlab-eval probe=fewshot."
            )

    def on_validation_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        epoch = trainer.current_epoch
        if trainer.sanity_checking or (epoch + 1) % self.every_n_epochs or self._probed_epoch == epoch:
            return
        self._probed_epoch = epoch
        self._probe(trainer, pl_module, "val", "probe/")

    def on_test_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._probe(trainer, pl_module, "test", "test/probe_")

    def _probe(self, trainer: pl.Trainer, pl_module: pl.LightningModule, split: str, prefix: str) -> None:
        datamodule = trainer.datamodule  # type: ignore[attr-defined]
        train_set, eval_set = (getattr(datamodule, f"{s}_set", None) for s in ("train", split))
        if train_set is None or eval_set is None:
            rank_zero_only(log.warning)(f"callbacks.probe: no datamodule with train and {split} sets; skipped")
            return
        start = time.monotonic()
        batch = int(getattr(datamodule, "per_device_batch_size", 64))
        workers = int(getattr(datamodule, "num_workers", 0))  # fresh workers, seeded by the loader's own generator
        model = getattr(pl_module, "model", pl_module)
        with rng_untouched():
            _seed_all(0)  # a training set without an evaluation view is read with the same augmentation each time
            metrics, sizes = self.scores(model, train_set, eval_set, batch, int(datamodule.num_classes), workers)
        # every process computed the same numbers: the mean over processes is them, and Lightning does not warn
        # about epoch-level values logged unsynchronised (every process reaches this hook, so nothing waits)
        pl_module.log_dict({prefix + k: v for k, v in metrics.items()}, on_step=False, on_epoch=True, sync_dist=True)
        shown = "  ".join(f"{prefix}{k} {v:.4f}" for k, v in metrics.items())
        took = time.monotonic() - start
        rank_zero_only(log.info)(f"{shown}  ({sizes[0]} train / {sizes[1]} {split} images, {took:.1f} s)")

    def scores(
        self,
        model: torch.nn.Module,
        train_set: Dataset,
        eval_set: Dataset,
        batch_size: int,
        num_classes: int,
        num_workers: int = 0,
    ) -> tuple[dict[str, float], tuple[int, int]]:
        """({"knn_acc": ..., "linear_acc": ...}, (reference images, evaluated images)) of `model`."""
        reference = _subset(eval_view(train_set, eval_set) or train_set, self.max_train_samples)
        train_f, train_y = extract_features(model, feature_loader(reference, batch_size, num_workers))
        evaluated = _subset(eval_set, self.max_eval_samples)
        eval_f, eval_y = extract_features(model, feature_loader(evaluated, batch_size, num_workers))
        acc = knn_accuracy(train_f, train_y, eval_f, eval_y, num_classes, self.k, self.temperature, self.weighted)
        metrics = {"knn_acc": acc}
        if self.linear:
            train_x, eval_x = standardise(train_f, eval_f)
            probe = fit_linear_probe(train_x, train_y, num_classes, c=self.linear_c)
            metrics["linear_acc"] = probe.accuracy(eval_x, eval_y)
        return metrics, (len(train_f), len(eval_f))


def _subset(dataset: Dataset, limit: int | None) -> Dataset:
    chosen = sample_indices(len(dataset), limit)  # type: ignore[arg-type]
    return dataset if chosen is None else Subset(dataset, chosen)


def _seed_all(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.default_generator.manual_seed(seed)  # the CPU one (transforms); torch.manual_seed would queue CUDA's


# the options' allowed values (vitlab.cli.validate_callbacks checks the config with the same wording)
ALLOWED = {
    "every_n_epochs": "an integer >= 1",
    "k": "an integer >= 1",
    "temperature": "a number > 0",
    "max_train_samples": "an integer >= 1 (or null)",
    "max_eval_samples": "an integer >= 1 (or null)",
    "linear_c": "a number > 0",
}


def check_probe_options(
    every_n_epochs: Any, k: Any, temperature: Any, max_train_samples: Any, max_eval_samples: Any, linear_c: Any
) -> None:
    """Refuse a value no probe can use (for a callback built without the config check, e.g. in Python)."""
    values = dict(every_n_epochs=every_n_epochs, k=k, temperature=temperature, max_train_samples=max_train_samples,
                  max_eval_samples=max_eval_samples, linear_c=linear_c)  # fmt: skip
    for key, value in values.items():
        integer = key in ("every_n_epochs", "k", "max_train_samples", "max_eval_samples")
        if value is None and key.startswith("max_"):
            continue
        number = isinstance(value, int if integer else (int, float)) and not isinstance(value, bool)
        if not number or (value < 1 if integer else not value > 0):
            raise ConfigError(f"callbacks.probe.{key}={value!r} is not allowed: it must be {ALLOWED[key]}.")
