"""The loader settings behind `ImageDataModule._loader`'s defaults, each measured against its alternative.

Part of `vitlab-bench data` (docs/performance.md, "Input pipeline"); vitlab's own imagefolder loader on the bench's
JPEG folder, interleaved rounds:

- `persistent_workers`: the time to the first batch of a new epoch with workers kept alive vs started again
  (the difference is the per-epoch start-up cost a non-persistent loader pays).
- `prefetch_factor` 2 vs 4: img/s of a full pass (batches each worker prepares ahead).
- `pin_memory`: only meaningful when batches are copied to a CUDA device; on a CPU-only machine it is reported
  as not measured (vitlab pins only when the trainer trains on CUDA).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from vitlab.bench.rounds import Spread, interleave, ratios


def _module(root: Path, opts: dict, workers: int, **loader: Any) -> Any:
    from vitlab.data.imagefolder import ImageFolderDataModule

    augment = dict(opts["augments"][opts["settings_augment"]])
    kw = {k: v for k, v in loader.items() if k != "persistent_workers"}
    dm = ImageFolderDataModule(
        str(root), batch_size=opts["batch_size"], num_workers=workers, img_size=opts["img_size"], augment=augment, **kw
    )
    dm.persistent_workers = loader.get("persistent_workers", True)
    return dm


def _first_batch(loader: Any, epoch: list[int]) -> Callable[[], float]:
    def go() -> float:
        epoch[0] += 1
        loader.sampler.set_epoch(epoch[0])
        start = time.perf_counter()
        it = iter(loader)
        next(it)
        first = time.perf_counter() - start
        for _ in it:  # finish the epoch, so the next one starts as in training
            pass
        return first

    return go


def _img_s(loader: Any, epoch: list[int]) -> Callable[[], float]:
    def go() -> float:
        epoch[0] += 1
        loader.sampler.set_epoch(epoch[0])
        start, images = time.perf_counter(), 0
        for _, target in loader:
            images += len(target)
        return images / (time.perf_counter() - start)

    return go


def measure_settings(root: Path, opts: dict) -> dict[str, Any]:
    """Each setting against its alternative in interleaved rounds; returns the figures for the report."""
    workers = max(1, int(opts["settings_workers"]))  # the settings act on workers
    rounds, untimed = int(opts["rounds"]), int(opts["untimed_rounds"])
    loaders = {
        "persistent": _module(root, opts, workers).train_dataloader(),
        "not_persistent": _module(root, opts, workers, persistent_workers=False).train_dataloader(),
        "prefetch_2": _module(root, opts, workers, prefetch_factor=2).train_dataloader(),
        "prefetch_4": _module(root, opts, workers, prefetch_factor=4).train_dataloader(),
    }
    first = interleave(
        {k: _first_batch(loaders[k], [0]) for k in ("persistent", "not_persistent")}, rounds, untimed or 1
    )
    speed = interleave({k: _img_s(loaders[k], [0]) for k in ("prefetch_2", "prefetch_4")}, rounds, untimed)
    startup = [b - a for a, b in zip(first["persistent"], first["not_persistent"], strict=True)]
    return {
        "workers": workers,
        "first_batch_s": {k: Spread.of(v).as_dict() for k, v in first.items()},
        "startup_per_epoch_s": Spread.of(startup).as_dict(),
        "prefetch_img_s": {k: Spread.of(v).as_dict() for k, v in speed.items()},
        "prefetch_4_vs_2": ratios(speed["prefetch_4"], speed["prefetch_2"]).as_dict(),
        "pin_memory": "measured only with CUDA" if not torch.cuda.is_available() else "not measured",
    }


def render_settings(fig: dict[str, Any], rounds: int) -> str:
    def s(d: dict[str, float], spec: str = ".3f", unit: str = "") -> str:
        return Spread(d["median"], d["min"], d["max"]).fmt(spec, unit)

    return "\n".join(
        [
            f"Loader settings (vitlab imagefolder loader, {fig['workers']} worker(s), {rounds} interleaved rounds):",
            "",
            "| setting | measured | default |",
            "|---|---|---|",
            f"| persistent_workers | first batch of a new epoch: {s(fig['first_batch_s']['persistent'], unit=' s')} "
            f"kept alive vs {s(fig['first_batch_s']['not_persistent'], unit=' s')} restarted; start-up per epoch "
            f"{s(fig['startup_per_epoch_s'], unit=' s')} | on (with workers) |",
            f"| prefetch_factor | 2: {s(fig['prefetch_img_s']['prefetch_2'], '.1f', ' img/s')}, 4: "
            f"{s(fig['prefetch_img_s']['prefetch_4'], '.1f', ' img/s')}; "
            f"4 vs 2 {s(fig['prefetch_4_vs_2'], '.2f', '×')} | 2 |",
            f"| pin_memory | {fig['pin_memory']} | on, applied only on CUDA |",
            "",
        ]
    )
