"""Which data a run read: one SHA-256 over every split's samples, recorded with the run (docs/runs.md).

Two copies of a data set that differ in one image get different hashes; no image is decoded. Each split
(`train`, `val`, `test`, in that order) contributes its name, its sample count and, per sample in the order
the loader reads it:

- a file (class folders, Tiny ImageNet, VTAB-1k): its path relative to the data folder, its size in bytes
  and its label (basis `files`);
- an in-memory array (digits): the bytes of the image and of its label (basis `arrays`);
- a lazily drawn image (fake): the generator's parameters (count, shape, classes, offset) and the sample's
  index, which is its seed (basis `generator`);
- a torchvision set: every file under its folder (relative path and size), then each sample's index into
  the set and its label (basis `files`).

The data module adds the settings that select samples (class names, selected classes, split files, split
seed and fractions), so another split or class subset is another hash.

Cache (folders only): `<folder>/.vitlab-fingerprint.json` keeps the result per selection (a digest of the
settings and split sizes), keyed by a stat walk of the folder: the number of files, their total size and
their newest status-change time (`st_ctime_ns`). Writing, replacing, adding or renaming a file sets its
ctime to now, and deleting one changes the count, so the hash is recomputed; unlike the modification time,
no tool (`touch -d`, `rsync -t`, `tar`) can set a ctime back. The limit: the rename rule holds on Linux's
usual file systems (ext4, XFS, Btrfs update ctime on rename), not by POSIX; where one does not, deleting the
cache file forces a recomputation. The key's walk stats each file once; the cache saves the per-sample work
(relative paths, label association, hashing). A folder that cannot be written is fingerprinted without a
cache, never refused.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import numpy as np
from torch.utils.data import Dataset, Subset

CACHE_FILE = ".vitlab-fingerprint.json"
SPLITS = ("train", "val", "test")


def unwrap(dataset: Dataset) -> tuple[Dataset, list[int]]:
    """The data set behind nested `Subset`s and the indices into it, in the order the split reads them."""
    indices: list[int] | None = None
    while isinstance(dataset, Subset):
        inner = [int(i) for i in dataset.indices]
        indices = inner if indices is None else [inner[i] for i in indices]
        dataset = dataset.dataset
    return dataset, (indices if indices is not None else list(range(len(dataset))))  # type: ignore[arg-type]


def folder_key(folder: Path) -> list[int]:
    """[files, total bytes, newest ctime_ns of a file]: the cache's key (see the module docstring). The cache
    file (and its temporary) is left out, so writing it does not change the key."""
    count, total, newest = 0, 0, 0
    stack = [str(folder)]
    while stack:
        with os.scandir(stack.pop()) as entries:
            for entry in entries:
                if entry.name.startswith(CACHE_FILE):
                    continue
                if entry.is_dir(follow_symlinks=True):
                    stack.append(entry.path)
                    continue
                st = entry.stat(follow_symlinks=True)
                count, total, newest = count + 1, total + st.st_size, max(newest, st.st_ctime_ns)
    return [count, total, newest]


def _labels(dataset: Any, indices: list[int]) -> np.ndarray:
    from vitlab.data.torchvision_sets import labels_of

    return labels_of(dataset)[indices] if indices else np.zeros(0, dtype=np.int64)


def _split_records(dataset: Any, indices: list[int], folder: Path | None) -> Iterator[tuple[str, bytes]]:
    """(basis, bytes) per sample block of one split; see the module docstring."""
    from torchvision.datasets import FakeData

    samples = getattr(dataset, "samples", None)
    if isinstance(samples, list) and folder is not None:  # ImageFolder, LabelledFiles: (path, label)
        for i in indices:
            path, label = samples[i]
            rel = os.path.relpath(path, folder)
            yield "files", f"{rel}\t{os.stat(path).st_size}\t{int(label)}\n".encode()
    elif hasattr(dataset, "images") and hasattr(dataset, "labels"):  # TensorImageDataset (digits)
        index = np.asarray(indices, dtype=np.int64)
        yield "arrays", dataset.images[index].contiguous().numpy().tobytes()
        yield "arrays", dataset.labels[index].numpy().astype(np.int64).tobytes()
    elif isinstance(dataset, FakeData):  # drawn lazily from torch's generator seeded by index + offset
        params = [dataset.size, list(dataset.image_size), dataset.num_classes, dataset.random_offset]
        yield "generator", json.dumps(params).encode()
        yield "generator", np.asarray(indices, dtype=np.int64).tobytes()
    else:  # a torchvision set: its files are hashed once (listing); here the indices and labels
        yield "files", np.asarray(indices, dtype=np.int64).tobytes()
        yield "files", _labels(dataset, indices).astype(np.int64).tobytes()


def _listing(folder: Path) -> bytes:
    """Every file under `folder` (relative path and size), sorted: what a torchvision set reads."""
    lines = []
    for dirpath, _, files in os.walk(folder):
        for name in files:
            if not name.startswith(CACHE_FILE):
                path = os.path.join(dirpath, name)
                lines.append(f"{os.path.relpath(path, folder)}\t{os.path.getsize(path)}\n")
    return "".join(sorted(lines)).encode()


def compute(
    splits: Mapping[str, Dataset], settings: Mapping[str, Any], folder: Path | None, list_folder: bool = False
) -> dict[str, Any]:
    """The fingerprint without the cache: {"sha256", "samples", "basis"}. `list_folder` hashes every file
    under `folder` too (torchvision sets, whose samples are not files)."""
    digest = hashlib.sha256(json.dumps(dict(settings), sort_keys=True, default=str).encode())
    if list_folder and folder is not None:
        digest.update(_listing(folder))
    samples, bases = 0, set()
    for name, dataset in splits.items():
        base, indices = unwrap(dataset)
        digest.update(f"split {name} {len(indices)}\n".encode())
        samples += len(indices)
        for basis, chunk in _split_records(base, indices, folder):
            bases.add(basis)
            digest.update(chunk)
    return {"sha256": digest.hexdigest(), "samples": samples, "basis": "+".join(sorted(bases)) or "empty"}


def fingerprint(
    splits: Mapping[str, Dataset], settings: Mapping[str, Any], folder: Path | None, list_folder: bool = False
) -> dict[str, Any]:
    """`compute`, cached in `<folder>/.vitlab-fingerprint.json` for folder data (see the module docstring)."""
    if folder is None or not folder.is_dir():
        return compute(splits, settings, folder, list_folder)
    sizes = {name: len(ds) for name, ds in splits.items()}  # type: ignore[arg-type]
    selection = json.dumps({"settings": dict(settings), "sizes": sizes}, sort_keys=True, default=str)
    entry_id = hashlib.sha256(selection.encode()).hexdigest()[:16]
    key = folder_key(folder)
    cache_path = folder / CACHE_FILE
    cache = read_cache(cache_path)
    hit = cache.get(entry_id)
    if isinstance(hit, dict) and hit.get("key") == key and isinstance(hit.get("result"), dict):
        return dict(hit["result"])
    result = compute(splits, settings, folder, list_folder)
    cache[entry_id] = {"key": key, "result": result}
    write_cache(cache_path, cache)
    return result


def read_cache(path: Path) -> dict[str, Any]:
    """A JSON object kept beside data (this module's cache, packed sets' verified checksums), or {}."""
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def write_cache(path: Path, cache: dict[str, Any]) -> None:
    """Whole or absent (a temporary file renamed); a read-only or full folder just keeps no cache."""
    tmp = path.with_name(f"{path.name}.{os.getpid()}.tmp")
    try:
        tmp.write_text(json.dumps(cache, indent=1, sort_keys=True))
        os.replace(tmp, path)
    except OSError:
        tmp.unlink(missing_ok=True) if tmp.parent.is_dir() else None
