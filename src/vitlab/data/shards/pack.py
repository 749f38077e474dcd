"""`pack`: write a data module's train/val/test splits as webdataset tar shards, an index and a manifest.

Samples keep the order their split reads them, so a packed set trained with the same seed sees the same
images in the same order as its source (docs/data.md). Shards are written by webdataset's `TarWriter` (the
format timm, webdataset and `tar` read); after each shard is closed, its members' byte offsets are read back
with `tarfile` into `<split>.index.npy`, which is what lets vitlab read any sample directly.
"""

from __future__ import annotations

import json
import shutil
import tarfile
import tempfile
from collections.abc import Iterator, Mapping
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np

from vitlab.data.base import ImageDataModule
from vitlab.data.shards.encode import Sample, digit_samples, split_samples
from vitlab.data.shards.manifest import (
    FORMAT,
    MANIFEST,
    SPLITS,
    VERSION,
    class_counts,
    content_sha256,
    index_name,
    shard_name,
    size_summary,
)
from vitlab.data.shards.store import filesystem, is_url, sha256_file
from vitlab.errors import ConfigError
from vitlab.extras import require

DEFAULT_SHARD_BYTES = 256 << 20  # webdataset's advice: shards of a few hundred MB stream well


def class_names(module: ImageDataModule) -> list[str]:
    """The module's class names where it has them (folders, wnids, torchvision's `classes`), else the indices."""
    for attr in ("classes", "wnids"):
        names = getattr(module, attr, None)
        if isinstance(names, list) and len(names) == module.num_classes:
            return [str(n) for n in names]
    base = module.train_set
    while hasattr(base, "dataset"):
        base = base.dataset
    names = getattr(base, "classes", None)
    if isinstance(names, list) and len(names) == module.num_classes:
        return [str(n) for n in names]
    return [str(i) for i in range(module.num_classes)]


def module_samples(module: ImageDataModule) -> dict[str, Iterator[Sample]]:
    """Each split's samples; digits are written from their 8x8 originals (vitlab.data.shards.encode)."""
    from vitlab.data.digits import DigitsDataModule

    module.setup()
    sets = {"train": module.train_set, "val": module.val_set, "test": module.test_set}
    if isinstance(module, DigitsDataModule):
        from sklearn.datasets import load_digits

        raw = load_digits()
        relabel = {digit: new for new, digit in enumerate(module.classes)}
        parts = dict(zip(SPLITS, module.split_indices(), strict=True))
        return {
            s: digit_samples(raw.images[p.numpy()], np.array([relabel[int(d)] for d in raw.target[p.numpy()]]))
            for s, p in parts.items()
        }
    return {split: split_samples(dataset) for split, dataset in sets.items()}  # type: ignore[arg-type]


def check_out(out: str, overwrite: bool) -> None:
    """A non-empty destination is refused unless `overwrite`: nothing there is touched before this passes."""
    if is_url(out):
        fs = filesystem(out)
        present = fs.exists(out) and bool(fs.ls(out))
    else:
        present = Path(out).is_dir() and any(Path(out).iterdir())
        if Path(out).exists() and not Path(out).is_dir():
            raise ConfigError(f"out={out} is a file; give a directory (new or empty) for the packed set.")
    if present and not overwrite:
        raise ConfigError(
            f"out={out} is not empty; vitlab-data pack writes only into a new or empty directory, so nothing there "
            "is lost. Choose another out=, or add overwrite=true to replace the packed set there (its shards, "
            "indices and manifest are written anew; other files are left alone)."
        )


class _SplitWriter:
    """Shards of one split, rolled over at `shard_bytes`; records shard files and the per-sample index."""

    def __init__(self, out: Path, split: str, shard_bytes: int) -> None:
        self.wds = require("data", "vitlab-data pack")
        self.out, self.split, self.shard_bytes = out, split, shard_bytes
        self.rows: list[tuple[int, int, int, int]] = []
        self.sizes: list[tuple[int, int]] = []
        self.shards: list[dict[str, Any]] = []
        self.writer, self.written, self.keys = None, 0, []

    def add(self, number: int, sample: Sample) -> None:
        data, ext, label, size = sample
        if self.writer is None:
            # a fixed whole-second member time: the same samples pack into the same bytes (the same set hash); a
            # float time would add a 1 KiB pax header before every member
            self.writer = self.wds.TarWriter(str(self.out / shard_name(self.split, len(self.shards))), mtime=0)
        key = f"{number:09d}"
        self.writer.write({"__key__": key, ext: data, "cls": str(label).encode()})
        self.keys.append((key, ext, label))
        self.sizes.append(size)
        self.written += len(data) + 1536  # two members: headers and padding, at most
        if self.written >= self.shard_bytes:
            self.close_shard()

    def close_shard(self) -> None:
        if self.writer is None:
            return
        self.writer.close()
        name = shard_name(self.split, len(self.shards))
        path = self.out / name
        with tarfile.open(path) as tar:
            members = {m.name: m for m in tar.getmembers()}
        for key, ext, label in self.keys:
            member = members[f"{key}.{ext}"]
            self.rows.append((len(self.shards), member.offset_data, member.size, label))
        self.shards.append(
            {"name": name, "samples": len(self.keys), "bytes": path.stat().st_size, "sha256": sha256_file(path)}
        )
        self.writer, self.written, self.keys = None, 0, []


def pack(
    module: ImageDataModule,
    out: str,
    *,
    source: Mapping[str, Any],
    overwrite: bool = False,
    shard_bytes: int = DEFAULT_SHARD_BYTES,
    progress: bool = True,
) -> dict[str, Any]:
    """Pack `module`'s splits into `out` (a directory or a URL) and return the manifest written there."""
    from vitlab import __version__

    check_out(out, overwrite)
    if shard_bytes < 1:
        raise ConfigError(
            f"shard_bytes={shard_bytes} must be a positive number of bytes (default {DEFAULT_SHARD_BYTES})."
        )
    require("data", "vitlab-data pack")
    samples = module_samples(module)
    classes = class_names(module)
    local = Path(tempfile.mkdtemp(prefix="vitlab-pack-")) if is_url(out) else Path(out)
    local.mkdir(parents=True, exist_ok=True)
    splits: dict[str, Any] = {}
    for split in SPLITS:
        writer = _SplitWriter(local, split, shard_bytes)
        total = len(getattr(module, f"{split}_set"))  # type: ignore[arg-type]
        for number, sample in enumerate(_progress(samples[split], total, f"pack {split}", progress)):
            if not 0 <= sample[2] < len(classes):
                raise ConfigError(
                    f"data: sample {number} of the '{split}' split has label {sample[2]}, outside the "
                    f"{len(classes)} classes (allowed 0..{len(classes) - 1}); nothing was packed for it."
                )
            writer.add(number, sample)
        writer.close_shard()
        if not writer.rows:
            raise ConfigError(f"data: the '{split}' split is empty; every split needs at least one image to pack.")
        index = np.asarray(writer.rows, dtype=np.int64)
        np.save(local / index_name(split), index)
        labels = index[:, 3]
        splits[split] = {
            "samples": len(index),
            "class_counts": class_counts(labels, len(classes)),
            "image_size": size_summary(np.asarray(writer.sizes)),
            "index": {"name": index_name(split), "sha256": sha256_file(local / index_name(split))},
            "shards": writer.shards,
        }
    manifest: dict[str, Any] = {
        "format": FORMAT,
        "version": VERSION,
        "vitlab_version": __version__,
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "source": dict(source),
        "classes": classes,
        "splits": splits,
    }
    manifest["sha256"] = content_sha256(manifest)
    (local / MANIFEST).write_text(json.dumps(manifest, indent=1) + "\n")
    if is_url(out):
        _upload(local, out, manifest)
        shutil.rmtree(local, ignore_errors=True)
    return manifest


def _upload(local: Path, out: str, manifest: Mapping[str, Any]) -> None:
    """Shards and indices first, the manifest last: a set with a manifest at the URL is complete."""
    fs = filesystem(out)
    fs.makedirs(out, exist_ok=True)
    for path in sorted(local.iterdir()):
        if path.name != MANIFEST:
            fs.put(str(path), f"{out.rstrip('/')}/{path.name}")
    fs.put(str(local / MANIFEST), f"{out.rstrip('/')}/{MANIFEST}")


def _progress(items: Iterator[Sample], total: int, what: str, show: bool) -> Iterator[Sample]:
    if not show:
        yield from items
        return
    from rich.progress import track

    yield from track(items, total=total, description=what, transient=False)
