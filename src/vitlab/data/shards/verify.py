"""`vitlab-data check` and `stats`: every file of a packed set against its manifest; counts of a data config."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np

from vitlab.data.base import ImageDataModule
from vitlab.data.shards.manifest import MANIFEST, SPLITS, class_counts, parse_manifest
from vitlab.data.shards.reader import load_index
from vitlab.data.shards.store import ShardStore, sha256_file
from vitlab.errors import ConfigError


def verify_set(root: str, cache_dir: str | None = None) -> tuple[list[str], dict[str, Any]]:
    """(problems, manifest): each index and shard present, of its size and sha256 (a progress bar over bytes)."""
    from rich.progress import Progress

    store = ShardStore(root, cache_dir)
    manifest = parse_manifest(store.read_text(MANIFEST), store.root)
    problems: list[str] = []
    shards = [shard for split in SPLITS for shard in manifest["splits"][split]["shards"]]
    with Progress(transient=False) as progress:
        task = progress.add_task("check", total=sum(int(s["bytes"]) for s in shards))
        for split in SPLITS:
            try:
                load_index(store, split, manifest)
            except ConfigError as exc:
                problems.append(str(exc).split(": ", 1)[-1])
        for shard in shards:
            try:
                path = store.local_path(shard["name"], int(shard["bytes"]), shard["sha256"])
            except ConfigError as exc:
                problems.append(str(exc).split(": ", 1)[-1])
                continue
            if not path.is_file():
                problems.append(f"{shard['name']} is missing")
            elif path.stat().st_size != int(shard["bytes"]):
                problems.append(f"{shard['name']} has {path.stat().st_size} bytes, not {shard['bytes']} (truncated?)")
            elif sha256_file(path, lambda n: progress.advance(task, n)) != shard["sha256"]:
                problems.append(f"{shard['name']} has another sha256 than packed")
    return problems, manifest


def config_stats(module: ImageDataModule) -> Mapping[str, Any]:
    """A manifest-like summary (classes, per-split per-class counts) of a data module, from labels only."""
    from vitlab.data.fingerprint import unwrap
    from vitlab.data.torchvision_sets import labels_of

    module.setup()
    splits = {}
    for split in SPLITS:
        base, indices = unwrap(getattr(module, f"{split}_set"))
        labels = labels_of(base)[indices] if indices else np.zeros(0, dtype=np.int64)
        splits[split] = {"samples": len(indices), "class_counts": class_counts(np.asarray(labels), module.num_classes)}
    from vitlab.data.shards.pack import class_names

    return {"classes": class_names(module), "splits": splits}
