"""The ODE pictures of a run (docs/papers/ode.md#ode-pictures), drawn once its test phase ends.

`<run dir>/figures/ode_step_sizes.png` (models with `model/step_size=scalar|channel`) and
`ode_memory_trajectory.png` (models with `model/head=memory_ode`, on the first test images), also sent to W&B
when the run logs there. Idle on every other model. Without matplotlib the run goes on and one log line
names `pip install 'vitlab[plots]'`.
"""

from __future__ import annotations

import logging
from pathlib import Path

import pytorch_lightning as pl
from torch import Tensor

from vitlab.analysis.ode_dynamics import memory_head, memory_trajectory, step_sizes
from vitlab.extras import MissingExtra
from vitlab.plots.figures import log_images
from vitlab.plots.ode import memory_trajectory_png, step_sizes_png
from vitlab.training.sharding import sharded_strategy

log = logging.getLogger("vitlab")

STEP_SIZES, TRAJECTORY = "ode_step_sizes", "ode_memory_trajectory"


class OdeFigures(pl.Callback):
    """Args:
    dirpath: the folder of the figures, `<run dir>/figures` (`${paths.output_dir}/figures`), where
        `vitlab-report` finds them.
    """

    images = 4  # test images the trajectory figure follows (the first of the first test batch): a legible legend

    def __init__(self, dirpath: str) -> None:
        self.dirpath = Path(dirpath)
        self._batch: tuple[Tensor, Tensor | None] | None = None

    def on_test_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._batch = None

    def on_test_batch_start(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, batch: object, batch_idx: int, dataloader_idx: int = 0
    ) -> None:
        if self._batch is None and isinstance(batch, (list, tuple)) and isinstance(batch[0], Tensor):
            labels = batch[1] if len(batch) > 1 and isinstance(batch[1], Tensor) else None
            self._batch = (
                batch[0][: self.images].detach().clone(),
                None if labels is None else labels[: self.images].detach().cpu(),
            )

    def on_test_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if trainer.global_rank != 0:
            return
        model = getattr(pl_module, "model", pl_module)
        strategy = sharded_strategy(trainer)
        if strategy is not None and (step_sizes(model) or memory_head(model) is not None):
            log.warning("ODE figures skipped: under %s each process holds only a shard of the weights", strategy)
            return
        try:
            written = self.draw(model)
        except MissingExtra as exc:
            log.warning("ODE figures skipped: %s", exc)
            return
        if written:
            log.info("ODE figures: %s", ", ".join(str(p) for p in written.values()))
            log_images(trainer.loggers, {f"ode/{name.removeprefix('ode_')}": p for name, p in written.items()})

    def draw(self, model: object) -> dict[str, Path]:
        """Write the figures this model has; name -> path."""
        written: dict[str, Path] = {}
        found = step_sizes(model)
        if found:
            branches: dict[str, list] = {}
            for s in found:
                branches.setdefault(s.branch, []).append(s.values)
            written[STEP_SIZES] = step_sizes_png(self._path(STEP_SIZES), branches, init=found[0].init)
        if memory_head(model) is not None and self._batch is not None:
            images, labels = self._batch
            path = memory_trajectory(model, images, labels)
            if path is not None:
                labels_list = None if path.labels is None else [int(v) for v in path.labels]
                written[TRAJECTORY] = memory_trajectory_png(
                    self._path(TRAJECTORY), path.times, path.states, path.inhibition, labels_list
                )
        return written

    def _path(self, name: str) -> Path:
        self.dirpath.mkdir(parents=True, exist_ok=True)
        return self.dirpath / f"{name}.png"
