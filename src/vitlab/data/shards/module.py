"""`data=shards`: train on a packed set with its source config's transforms, splits and classes (docs/data.md)."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from torch.utils.data import Dataset

from vitlab.data.base import ImageDataModule
from vitlab.data.fingerprint import read_cache, write_cache
from vitlab.data.shards.manifest import MANIFEST, SPLITS, parse_manifest
from vitlab.data.shards.reader import ShardSplit, check_shard_file, load_index
from vitlab.data.shards.store import ShardStore, sha256_file
from vitlab.data.shards.transforms import source_transforms
from vitlab.errors import ConfigError

VERIFY = ("auto", "full", "size")
VERIFIED_FILE = ".vitlab-verified.json"
# the source keys a packed set can be trained with differently; the rest (root, splits, classes) is packed in
OVERRIDABLE = ("img_size", "augment", "mean", "std", "crop_pct")


def read_manifest(root: str, cache_dir: str | None = None) -> dict[str, Any]:
    store = ShardStore(root, cache_dir)
    return parse_manifest(store.read_text(MANIFEST), store.root)


class ShardsDataModule(ImageDataModule):
    """A packed set (`vitlab-data pack`), read by byte offset from local or cached shards.

    Args:
        root: the packed set's directory or URL.
        img_size, batch_size: as the other data configs (configs/data/shards.yaml takes the source's by default).
        source: source keys to change (`img_size` excepted): `augment`, `mean`, `std`, `crop_pct`.
        verify: `auto` (each shard's sha256 once, remembered beside it by size and change time), `full` (every
            start), `size` (sizes only; `vitlab-data check` hashes).
        cache_dir: where the shards of a remote set are copied.
    """

    def __init__(
        self,
        root: str,
        batch_size: int = 64,
        num_workers: int = 4,
        img_size: int = 32,
        pin_memory: bool = True,
        prefetch_factor: int = 2,
        source: Mapping[str, Any] | None = None,
        verify: str = "auto",
        cache_dir: str | None = None,
    ) -> None:
        super().__init__(batch_size, num_workers, img_size, pin_memory, prefetch_factor)
        if not root:
            raise ConfigError("data.root is not set: data=shards needs the directory or URL of a packed set.")
        if verify not in VERIFY:
            raise ConfigError(f"data.verify={verify!r} is not allowed; allowed: {list(VERIFY)}.")
        unknown = sorted(set(source or {}) - set(OVERRIDABLE))
        if unknown:
            raise ConfigError(
                f"data.source has keys {unknown} that a packed set cannot change; allowed: {list(OVERRIDABLE[1:])} "
                "(and data.img_size). Splits, classes and images are fixed when the set is packed: re-pack to change "
                "them."
            )
        self.store = ShardStore(root, cache_dir)
        self.manifest = parse_manifest(self.store.read_text(MANIFEST), self.store.root)
        self.verify = verify
        self.settings = {**self.manifest["source"], **dict(source or {}), "img_size": img_size}
        self.train_tf, self.eval_tf = source_transforms(self.settings)

    @property
    def num_classes(self) -> int:
        return len(self.manifest["classes"])

    @property
    def classes(self) -> list[str]:
        return list(self.manifest["classes"])

    def fingerprint(self) -> dict[str, Any]:
        """The manifest's content hash: the same for every copy of the set (local, cached, at a URL)."""
        samples = sum(int(self.manifest["splits"][s]["samples"]) for s in SPLITS)
        return {"sha256": self.manifest["sha256"], "samples": samples, "basis": "manifest"}

    def _paths(self, split: str) -> list[str]:
        shards = self.manifest["splits"][split]["shards"]
        paths = [check_shard_file(self.store, shard) for shard in shards]
        # one process per node hashes (the node's copy); its other ranks would read the same bytes again
        first_on_node = self.trainer is None or getattr(self.trainer, "local_rank", 0) == 0
        if self.verify != "size" and first_on_node:
            verified = self._verified()
            for path, shard in zip(paths, shards, strict=True):
                self._check_sha256(Path(path), shard, verified)
        return paths

    def _check_sha256(self, path: Path, shard: Mapping[str, Any], verified: dict[str, Any]) -> None:
        st = path.stat()
        key = [shard["sha256"], st.st_size, st.st_mtime_ns, st.st_ctime_ns]
        if self.verify == "auto" and verified.get(shard["name"]) == key:
            return
        got = sha256_file(path)
        if got != shard["sha256"]:
            raise ConfigError(
                f"data.root={self.store.root}: shard {shard['name']} does not match its manifest (sha256 {got[:12]}… "
                f"where {shard['sha256'][:12]}… was packed): its bytes changed since packing. Copy it again or "
                "re-pack; nothing was trained on it."
            )
        verified[shard["name"]] = key
        self._remember(verified)

    def _verified(self) -> dict[str, Any]:
        return read_cache(self.store.cache / VERIFIED_FILE)

    def _remember(self, verified: dict[str, Any]) -> None:
        """Best effort: a read-only set is hashed again next time, never refused."""
        write_cache(self.store.cache / VERIFIED_FILE, verified)

    def _build(self) -> tuple[Dataset, Dataset, Dataset]:
        tf = {"train": self.train_tf, "val": self.eval_tf, "test": self.eval_tf}
        return tuple(  # type: ignore[return-value]
            ShardSplit(self._paths(s), load_index(self.store, s, self.manifest), tf[s]) for s in SPLITS
        )
