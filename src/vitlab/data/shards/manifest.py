"""`manifest.json` of a packed set: what it holds, how to check it, and the hash a run records (docs/data.md).

A packed set is a directory (or a URL) with, per split, tar shards in webdataset's layout (`<key>.<ext>` holds
the image's original encoded bytes, `<key>.cls` its label), one index (`<split>.index.npy`: shard number, byte
offset and size of each image, label) and this manifest. The manifest is the only file read before training
starts; every other file is checked against the size and sha256 it records.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from typing import Any

import numpy as np

from vitlab.errors import ConfigError

FORMAT = "vitlab-shards"
VERSION = 1
MANIFEST = "manifest.json"
SPLITS = ("train", "val", "test")
INDEX_COLUMNS = ("shard", "offset", "size", "label")  # int64 columns of <split>.index.npy


def index_name(split: str) -> str:
    return f"{split}.index.npy"


def shard_name(split: str, number: int) -> str:
    return f"{split}-{number:06d}.tar"


def content_sha256(manifest: Mapping[str, Any]) -> str:
    """The set's identity: its classes and, per split, every file's sha256 (shards and index). Two packs of the
    same samples in the same order give the same hash; the creation time and the vitlab version do not count."""
    digest = hashlib.sha256(json.dumps(list(manifest["classes"])).encode())
    for split in SPLITS:
        entry = manifest["splits"][split]
        digest.update(f"split {split} {entry['samples']} {entry['index']['sha256']}\n".encode())
        for shard in entry["shards"]:
            digest.update(f"{shard['name']} {shard['bytes']} {shard['sha256']}\n".encode())
    return digest.hexdigest()


def parse_manifest(text: str, where: str) -> dict[str, Any]:
    """The manifest at `where` (for messages), checked for format, version, splits and labels."""
    try:
        manifest = json.loads(text)
    except ValueError as exc:
        raise ConfigError(f"data.root={where}: {MANIFEST} is not valid JSON ({exc}); re-pack the set.") from exc
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
        raise ConfigError(
            f"data.root={where}: {MANIFEST} is not a vitlab packed set (format {manifest.get('format')!r} "
            f"where {FORMAT!r} was expected). Pack one with `vitlab-data pack data=<config> out=<dir>`."
        )
    if manifest.get("version") != VERSION:
        raise ConfigError(
            f"data.root={where}: {MANIFEST} has format version {manifest.get('version')!r}; this vitlab reads "
            f"version {VERSION} only. Re-pack the set with this vitlab (`vitlab-data pack ...`), or use the vitlab "
            f"version that wrote it ({manifest.get('vitlab_version', 'unknown')})."
        )
    splits = manifest.get("splits", {})
    missing = [s for s in SPLITS if s not in splits]
    if missing:
        raise ConfigError(f"data.root={where}: {MANIFEST} lacks the split(s) {missing}; allowed: {list(SPLITS)}.")
    for split in SPLITS:
        if int(splits[split]["samples"]) < 1:
            raise ConfigError(
                f"data.root={where}: the '{split}' split is empty (0 samples); every split ({', '.join(SPLITS)}) "
                "needs at least one image. Re-pack from a data config whose splits all hold images."
            )
    if manifest.get("sha256") != content_sha256(manifest):
        raise ConfigError(
            f"data.root={where}: {MANIFEST} was edited after packing (its sha256 does not match its contents). "
            "Re-pack the set rather than editing the manifest."
        )
    return manifest


def check_index(index: np.ndarray, split: str, manifest: Mapping[str, Any], where: str) -> None:
    """The index of `split` agrees with the manifest: sample count, shard numbers, labels inside the classes."""
    entry, classes = manifest["splits"][split], len(manifest["classes"])
    if index.ndim != 2 or index.shape != (int(entry["samples"]), len(INDEX_COLUMNS)):
        raise ConfigError(
            f"data.root={where}: {index_name(split)} has shape {tuple(index.shape)}, the manifest says "
            f"{entry['samples']} samples x {len(INDEX_COLUMNS)} columns; re-pack the set."
        )
    labels, shards = index[:, 3], index[:, 0]
    bad = np.flatnonzero((labels < 0) | (labels >= classes))
    if bad.size:
        raise ConfigError(
            f"data.root={where}: sample {int(bad[0])} of '{split}' has label {int(labels[bad[0]])}, outside the "
            f"{classes} classes (allowed: 0..{classes - 1}); {bad.size} such sample(s). Re-pack from a data config "
            "whose labels match its classes."
        )
    if shards.size and (shards.min() < 0 or shards.max() >= len(entry["shards"])):
        raise ConfigError(f"data.root={where}: {index_name(split)} names a shard the manifest lacks; re-pack the set.")


def class_counts(labels: np.ndarray, classes: int) -> list[int]:
    return np.bincount(labels.astype(np.int64), minlength=classes).tolist()


def size_summary(sizes: np.ndarray) -> dict[str, list[int]]:
    """min / median / max of the images' width and height (as decoded from their headers)."""
    if not len(sizes):
        return {}
    return {
        "min": sizes.min(axis=0).astype(int).tolist(),
        "median": np.median(sizes, axis=0).astype(int).tolist(),
        "max": sizes.max(axis=0).astype(int).tolist(),
    }
