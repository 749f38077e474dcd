"""`vitlab-bench data`: training images/s per loader worker, vitlab's loaders against timm's, same JPEG files.

Every entry decodes the same folder of JPEGs (`vitlab.bench.data_folder`) with the same training transform at
the same size: RandomResizedCrop + flip (the imagefolder config's augmentation), or that plus RandAugment and
random erasing (the DeiT / MAE recipes). The entries:

- `vitlab`: `ImageFolderDataModule.train_dataloader()`, the loader `vitlab-train data=imagefolder` trains on
  (SeededSamples + EpochSampler + ResumableLoader), outside a trainer.
- `timm`: `timm.data.create_loader` over `timm.data.create_dataset('', root=<train dir>)`, same options, without
  timm's CUDA prefetcher (so the transform also normalises and erases on the worker, as ours does).
- `shards`: the same folder packed once into tar shards (`vitlab.data.shards`), read by `ShardsDataModule`.

A cell is (workers, augmentation, cache); each round runs every cell's entries once, in the same order, and a
pass is one full epoch of the loader. A `cold` cell drops the page cache before each pass
(`/proc/sys/vm/drop_caches`, root only; the table says when that was not possible). Loaders are built once per
cell with persistent workers, so a pass measures steady-state loading, not worker start-up (measured apart in
`vitlab.bench.data_settings`). docs/performance.md, "Input pipeline", has the figures and what they mean.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import torch

from vitlab.bench.data_folder import make_folder
from vitlab.bench.env import environment, header
from vitlab.bench.rounds import Spread, ratios
from vitlab.errors import ConfigError

ENTRIES = ("vitlab", "timm", "shards")
CACHES = ("warm", "cold")
DROP_CACHES = Path("/proc/sys/vm/drop_caches")
MEAN, STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)


def drop_page_cache() -> bool:
    """Write back dirty pages and drop the clean ones, so the next read comes from the disk; False if not root."""
    try:
        os.sync()
        DROP_CACHES.write_text("3\n")
        return True
    except OSError:
        return False


def vitlab_loader(root: Path, augment: dict, workers: int, opts: dict) -> Iterable:
    from vitlab.data.imagefolder import ImageFolderDataModule

    dm = ImageFolderDataModule(
        str(root), batch_size=opts["batch_size"], num_workers=workers, img_size=opts["img_size"], augment=augment
    )
    return dm.train_dataloader()


def timm_loader(root: Path, augment: dict, workers: int, opts: dict) -> Iterable:
    from timm.data import create_dataset, create_loader

    from vitlab.data.transforms import use_posterize_any_bits

    if augment.get("randaugment"):
        use_posterize_any_bits()  # the same RandAugment ops as ours (Pillow >= 13 refuses 0-bit posterize)
    dataset = create_dataset("", root=str(root / "train"))
    size = opts["img_size"]
    return create_loader(
        dataset,
        input_size=(3, size, size),
        batch_size=opts["batch_size"],
        is_training=True,
        scale=tuple(augment["scale"]),
        hflip=augment["hflip"],
        color_jitter=None,  # timm's default is 0.4; our configs have none
        auto_augment=augment.get("randaugment"),
        re_prob=augment.get("random_erasing", 0.0),
        interpolation="bicubic",  # vitlab.data.transforms.build_transform's
        mean=MEAN,
        std=STD,
        num_workers=workers,
        pin_memory=False,
        use_prefetcher=False,
        persistent_workers=workers > 0,
    )


def shards_loader(root: Path, augment: dict, workers: int, opts: dict) -> Iterable:
    """The folder packed once (under `<root>.shards`), then read by `ShardsDataModule` with the same settings."""
    from vitlab.data.imagefolder import ImageFolderDataModule
    from vitlab.data.shards.module import ShardsDataModule
    from vitlab.data.shards.pack import pack

    out = root.parent / f"{root.name}.shards"
    if not (out / "manifest.json").is_file():  # packed once, beside the folder (the folder is made once too)
        source = {"_target_": "vitlab.data.imagefolder.ImageFolderDataModule", "root": str(root)}
        source |= {"img_size": opts["img_size"], "augment": augment}
        pack(ImageFolderDataModule(str(root), img_size=opts["img_size"]), str(out), source=source, progress=False)
    dm = ShardsDataModule(
        root=str(out),
        batch_size=opts["batch_size"],
        num_workers=workers,
        img_size=opts["img_size"],
        source={"augment": augment},
    )
    return dm.train_dataloader()


BUILDERS: dict[str, Callable[[Path, dict, int, dict], Iterable]] = {
    "vitlab": vitlab_loader,
    "timm": timm_loader,
    "shards": shards_loader,
}


def one_pass(loader: Iterable, epoch: int) -> tuple[float, int, torch.Tensor]:
    """Seconds for one epoch, the images it yielded, and how many of each label (the same files for every entry)."""
    sampler = getattr(loader, "sampler", None)
    if hasattr(sampler, "set_epoch"):  # as Lightning does per epoch: a new order, new augmentation seeds
        sampler.set_epoch(epoch)  # type: ignore[union-attr]
    labels: list[torch.Tensor] = []
    start = time.perf_counter()
    for _, target in loader:
        labels.append(target)
    seconds = time.perf_counter() - start
    seen = torch.cat(labels) if labels else torch.zeros(0, dtype=torch.long)
    return seconds, len(seen), torch.bincount(seen)


def _cells(opts: dict) -> list[tuple[int, str, str]]:
    cells = [(int(w), str(a), str(c)) for w, a, c in opts["cells"]]
    for workers, augment, cache in cells:
        if workers < 0 or augment not in opts["augments"] or cache not in CACHES:
            raise ConfigError(
                f"data_loading.cells has [{workers}, {augment}, {cache}]; each cell is [workers >= 0, one of "
                f"data_loading.augments ({', '.join(opts['augments'])}), warm|cold]."
            )
    return cells


def measure(opts: dict, out_dir: Path) -> dict[str, Any]:
    """Build the loaders, run the interleaved rounds; returns the JSON record the report is made from."""
    unknown = sorted(set(opts["entries"]) - set(ENTRIES))
    if unknown:
        raise ConfigError(f"data_loading.entries has {unknown}; allowed: {', '.join(ENTRIES)}.")
    cells = _cells(opts)
    root = make_folder(out_dir / "data_loading_images", int(opts["images"]), int(opts["classes"]))
    skipped: dict[str, str] = {}
    loaders: dict[tuple, Iterable] = {}
    for workers, augment, cache in cells:
        for entry in opts["entries"]:
            if entry in skipped:
                continue
            try:
                loaders[(workers, augment, cache, entry)] = BUILDERS[entry](
                    root, dict(opts["augments"][augment]), workers, opts
                )
            except Exception as exc:  # e.g. shards without the [data] extra: the table says why, the rest runs
                skipped[entry] = f"not measured: {type(exc).__name__}: {exc}"
                print(f"vitlab-bench data: {entry} {skipped[entry]}", flush=True)
    cold_ok = drop_page_cache() if any(c == "cold" for _, _, c in cells) else True
    env = environment("cpu")
    samples: dict[str, list[float]] = {}
    counts: dict[str, list[int]] = {}
    labels: dict[str, list[int]] = {}
    for r in range(int(opts["untimed_rounds"]) + int(opts["rounds"])):
        for key, loader in loaders.items():
            if key[2] == "cold":
                drop_page_cache()
            seconds, images, hist = one_pass(loader, epoch=r)
            name = "/".join(map(str, key))
            labels[name] = hist.tolist()
            if r >= int(opts["untimed_rounds"]):
                samples.setdefault(name, []).append(images / seconds / max(key[0], 1))
                counts[name] = [images]
    return {
        "settings": {k: v for k, v in opts.items() if k != "cells"} | {"cells": [list(c) for c in cells]},
        "env": env,
        "cold_cache_dropped": cold_ok,
        "skipped": skipped,
        "per_worker_img_s": samples,
        "images_per_pass": {k: v[0] for k, v in counts.items()},
        "labels_per_pass": labels,
    }


def render(record: dict[str, Any]) -> str:
    """The Markdown table: img/s per worker per cell and entry, and each entry's per-round ratio against timm."""
    opts = record["settings"]
    lines = [
        header(record["env"]),
        "",
        f"Training loaders at {opts['img_size']} px, batch {opts['batch_size']}, {opts['images']} JPEGs "
        f"(~375x500, quality 90, {opts['classes']} classes); one pass = one epoch; img/s per worker (the main "
        f"process when workers = 0): median (min–max) of {opts['rounds']} interleaved rounds after "
        f"{opts['untimed_rounds']} untimed. vs timm, vs folder: the entry's img/s / timm's, / the `vitlab` folder "
        "loader's, within each round.",
        "",
        "| workers | augmentation | cache | entry | img/s per worker | vs timm | vs folder |",
        "|---:|---|---|---|---:|---:|---:|",
    ]
    samples = record["per_worker_img_s"]
    for workers, augment, cache in opts["cells"]:
        cache_label = cache if cache == "warm" or record["cold_cache_dropped"] else "cold (not dropped: not root)"
        cell = f"{workers}/{augment}/{cache}"
        timm, folder = samples.get(f"{cell}/timm"), samples.get(f"{cell}/vitlab")
        for entry in opts["entries"]:
            name = f"{cell}/{entry}"
            if name not in samples:
                continue
            vs = ratios(samples[name], timm).fmt(".2f", "×") if timm and entry != "timm" else ""
            vs_folder = ratios(samples[name], folder).fmt(".2f", "×") if folder and entry == "shards" else ""
            figure = Spread.of(samples[name]).fmt(".1f")
            lines.append(f"| {workers} | {augment} | {cache_label} | {entry} | {figure} | {vs} | {vs_folder} |")
    for entry, reason in record["skipped"].items():
        lines.append(f"\n`{entry}`: {reason}")
    lines += ["", *feed_lines(record)]
    if "loader_settings" in record:
        from vitlab.bench.data_settings import render_settings

        lines += ["", render_settings(record["loader_settings"], int(opts["rounds"]))]
    return "\n".join(lines) + "\n"


def feed_lines(record: dict[str, Any]) -> list[str]:
    """Cores that keep one GPU fed: the published training rate / our img/s per worker, per warm-cache cell."""
    gpu = record["settings"]["gpu_rate"]
    lines = [f"Cores (one loader worker each) to feed {gpu['model']} at {gpu['img_s']} img/s ({gpu['source']}):", ""]
    for name, values in record["per_worker_img_s"].items():
        workers, augment, cache, entry = name.split("/")
        if int(workers) > 0 and cache == "warm":
            per_core = Spread.of(values).median
            lines.append(f"- {entry}, {augment}: {gpu['img_s'] / per_core:.1f} cores ({per_core:.1f} img/s per worker)")
    return lines


def run(opts: dict, out_dir: Path) -> Path:
    """Measure, write `data_loading.{json,md}` under out_dir; returns the Markdown path."""
    out_dir.mkdir(parents=True, exist_ok=True)
    record = measure(opts, out_dir)
    if opts.get("loader_settings"):
        from vitlab.bench.data_settings import measure_settings

        record["loader_settings"] = measure_settings(out_dir / "data_loading_images", opts)
    (out_dir / "data_loading.json").write_text(json.dumps(record, indent=2))
    md = out_dir / "data_loading.md"
    md.write_text(render(record))
    return md
