"""`ShardSplit`: one split of a packed set as a map-style data set, read by byte offset.

Random access is what keeps vitlab's training order (`vitlab.data.sampling.EpochSampler`: a permutation of
(seed, epoch), each rank its slice of every global batch) and so exact resume and once-per-epoch coverage
under DDP, for packed sets exactly as for folders. Each process (rank or loader worker) opens a shard the
first time it needs one and keeps it open: one `open` per shard and process, then one `pread` per image.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import os
from collections.abc import Callable, Mapping
from typing import Any

import numpy as np
from PIL import Image, UnidentifiedImageError
from torch.utils.data import Dataset

from vitlab.data.shards.manifest import check_index, index_name
from vitlab.data.shards.store import ShardStore
from vitlab.errors import ConfigError


def check_shard_file(store: ShardStore, shard: Mapping[str, Any]) -> str:
    """The local path of a shard whose size is the manifest's: a missing or truncated shard stops here."""
    path = store.local_path(shard["name"], int(shard["bytes"]), shard["sha256"])
    if not path.is_file():
        raise ConfigError(
            f"data.root={store.root}: shard {shard['name']} is missing (listed in the manifest with "
            f"{shard['samples']} samples). Copy the whole packed set again, or re-pack it; `vitlab-data check "
            f"{store.root}` lists every damaged file."
        )
    size = path.stat().st_size
    if size != int(shard["bytes"]):
        raise ConfigError(
            f"data.root={store.root}: shard {shard['name']} has {size} bytes where the manifest says "
            f"{shard['bytes']} (truncated or replaced). Copy it again or re-pack; `vitlab-data check {store.root}` "
            "verifies every checksum."
        )
    return str(path)


def load_index(store: ShardStore, split: str, manifest: Mapping[str, Any]) -> np.ndarray:
    """`<split>.index.npy`, checked against the manifest (its sha256: it is small; its rows' labels)."""
    entry = manifest["splits"][split]["index"]
    try:
        data = store.read_bytes(entry["name"])
    except FileNotFoundError as exc:
        raise ConfigError(
            f"data.root={store.root}: {index_name(split)} is missing; re-pack or copy the set again."
        ) from exc
    if hashlib.sha256(data).hexdigest() != entry["sha256"]:
        raise ConfigError(
            f"data.root={store.root}: {entry['name']} does not match its manifest (sha256); re-pack the set."
        )
    index = np.load(io.BytesIO(data), allow_pickle=False)
    check_index(index, split, manifest, store.root)
    return index


class ShardSplit(Dataset):
    """Image `i` of a split: its bytes read at the index's offset, decoded with PIL, then `transform`."""

    def __init__(self, paths: list[str], index: np.ndarray, transform: Callable[[Image.Image], Any]) -> None:
        self.paths, self.index, self.transform = paths, index, transform
        self.targets = index[:, 3].tolist()  # labels without reading images (fingerprint, stratified splits)
        self._files: dict[int, int] = {}
        self._pid = os.getpid()

    def __len__(self) -> int:
        return len(self.index)

    def __getstate__(self) -> dict[str, Any]:  # loader workers open their own files
        return {**self.__dict__, "_files": {}}

    def _fd(self, shard: int) -> int:
        if self._pid != os.getpid():  # forked into a worker: the parent's descriptors share a file offset
            self._files, self._pid = {}, os.getpid()
        if shard not in self._files:
            self._files[shard] = os.open(self.paths[shard], os.O_RDONLY)
        return self._files[shard]

    def read(self, i: int) -> bytes:
        shard, offset, size, _ = (int(v) for v in self.index[i])
        data = os.pread(self._fd(shard), size, offset)
        if len(data) != size:
            raise ConfigError(
                f"data: {self.paths[shard]} ends before sample {i} ({len(data)} of {size} bytes at offset {offset}): "
                "the shard is truncated. Copy it again or re-pack the set."
            )
        return data

    def __getitem__(self, i: int) -> tuple[Any, int]:
        data = self.read(i)
        try:
            image = Image.open(io.BytesIO(data))
            image.load()
        except (OSError, UnidentifiedImageError, ValueError, SyntaxError) as exc:
            raise ConfigError(
                f"data: sample {i} in {self.paths[int(self.index[i, 0])]} is not a readable image "
                f"({type(exc).__name__}: {exc}); run `vitlab-data check` on the set and re-pack it."
            ) from exc
        return self.transform(image), int(self.index[i, 3])

    def __del__(self) -> None:
        for fd in getattr(self, "_files", {}).values():
            with contextlib.suppress(OSError):
                os.close(fd)
