"""Where a packed set's files are: a local directory, or a URL whose files are copied into a local cache.

A URL (`s3://`, `gs://`, `https://`, anything fsspec knows) is read through fsspec, which torch already
installs; the protocol's own package (s3fs, gcsfs, aiohttp for http) is optional, and its absence is one
paragraph naming the `pip install`. A remote shard is copied once into `cache_dir` (a temporary file renamed
into place, so parallel ranks and workers never read a half-written copy) and checked against the manifest's
sha256 before it is used.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

from vitlab.errors import ConfigError

CHUNK = 1 << 20


def is_url(root: str) -> bool:
    return "://" in str(root) and not str(root).startswith("file://")


def filesystem(url: str):  # -> fsspec.AbstractFileSystem
    """fsspec's file system of `url`'s protocol, or one paragraph naming the package to install."""
    import fsspec
    from fsspec.registry import known_implementations

    protocol = url.split("://", 1)[0]
    try:
        return fsspec.filesystem(protocol)
    except ImportError as exc:
        package = known_implementations.get(protocol, {}).get("err", str(exc))
        raise ConfigError(
            f"data.root={url}: reading {protocol}:// needs an optional package that is not installed ({package}). "
            f"Install it (e.g. `pip install s3fs` for s3://, `pip install gcsfs` for gs://), or copy the packed "
            "set to a local or shared directory and point data.root there."
        ) from exc
    except ValueError as exc:
        known = ", ".join(sorted(known_implementations))
        raise ConfigError(f"data.root={url}: unknown protocol {protocol!r}; fsspec knows: {known}.") from exc


def sha256_file(path: Path, progress=None) -> str:  # progress: a callable taking the bytes read
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(CHUNK):
            digest.update(chunk)
            if progress is not None:
                progress(len(chunk))
    return digest.hexdigest()


class ShardStore:
    """The files of one packed set: `read_text(name)` and `local_path(name, size, sha256)`."""

    def __init__(self, root: str, cache_dir: str | None = None) -> None:
        self.root = str(root).removeprefix("file://").rstrip("/")
        self.remote = is_url(self.root)
        self.fs = filesystem(self.root) if self.remote else None
        if self.remote:
            digest = hashlib.sha256(self.root.encode()).hexdigest()[:16]
            base = Path(cache_dir) if cache_dir else Path.home() / ".cache" / "vitlab" / "shards"
            self.cache = base / digest
        else:
            self.cache = Path(self.root)

    def where(self, name: str) -> str:
        return f"{self.root}/{name}"

    def read_text(self, name: str) -> str:
        try:
            if self.fs is not None:
                with self.fs.open(self.where(name), "rt") as f:
                    return f.read()
            return Path(self.root, name).read_text()
        except FileNotFoundError as exc:
            raise ConfigError(
                f"data.root={self.root}: no {name} there. A packed set is a directory written by "
                "`vitlab-data pack data=<config> out=<dir>` (or `vitlab-data prepare ...`)."
            ) from exc

    def read_bytes(self, name: str) -> bytes:
        if self.fs is not None:
            return self.fs.cat_file(self.where(name))
        return Path(self.root, name).read_bytes()

    def local_path(self, name: str, size: int, sha256: str) -> Path:
        """A local file with `name`'s bytes: the file itself, or a checked copy in the cache."""
        path = self.cache / name
        if not self.remote:
            return path
        if path.is_file() and path.stat().st_size == size:
            return path  # copied and checked by an earlier process
        self.cache.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f"{name}.{os.getpid()}.part")
        try:
            self.fs.get(self.where(name), str(tmp))
        except FileNotFoundError as exc:
            raise ConfigError(f"data.root={self.root}: {name} is listed in the manifest but missing.") from exc
        got = sha256_file(tmp)
        if got != sha256:
            tmp.unlink(missing_ok=True)
            raise ConfigError(
                f"data.root={self.root}: {name} does not match its manifest (sha256 {got[:12]}… where "
                f"{sha256[:12]}… was packed). The copy at the URL is damaged or was replaced: re-upload it or re-pack."
            )
        os.replace(tmp, path)
        return path
