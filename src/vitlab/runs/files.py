"""A run's files on disk: written whole or not at all, JSON written one way and read one way.

Every file vitlab writes (checkpoints, `results.json`, `run.json`, `config_resolved.yaml`, tables, figures,
bench records, exported weights) goes to `<name>.tmp` in the same folder, is flushed to disk and renamed over
`<name>` (`atomic_open`, `write_text`, `write_bytes`, `write_json`): a full disk, a kill or a lost node leaves
the old file or the new one, never half of one, and a failed write removes its `.tmp`. An append-only log
(`metrics.csv`) is appended with `append_whole`: a failed append is cut back to the rows before it. Any
`OSError` while writing becomes `vitlab.errors.WriteFailed`, which names the file and what the errno means.
Every reader of a run's status goes through `read_results` / `results_status`, so a file that cannot be read
means the same thing everywhere: status `unreadable` (not ok: a table runs the row again, a resume refuses
nothing because of it).
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from pathlib import Path
from typing import IO, Any

from vitlab.errors import WriteFailed, exception_chain

RESULTS_FILE = "results.json"
UNREADABLE = "unreadable"


def fsync_replace(tmp: Path, target: Path) -> None:
    """Make `tmp` durable, then atomically rename it to `target` (and make the rename durable): a crash at any
    moment leaves the old file or the new one, never half of one."""
    with open(tmp, "rb") as handle:
        os.fsync(handle.fileno())
    os.replace(tmp, target)
    try:
        directory = os.open(target.parent, os.O_RDONLY)
    except OSError:  # some file systems do not open directories; the rename is atomic regardless
        return
    try:
        os.fsync(directory)
    finally:
        os.close(directory)


def tmp_name(path: Path) -> Path:
    """Where `path` is written before it is renamed into place: `<name>.tmp` beside it (same file system)."""
    return path.with_name(path.name + ".tmp")


def discard(tmp: Path) -> None:
    """Remove a half-written temporary file if it is there; a file system that refuses even that keeps it."""
    with suppress(OSError):
        tmp.unlink(missing_ok=True)


@contextmanager
def atomic_open(path: Path | str, mode: str = "w", **kwargs: Any) -> Iterator[IO[Any]]:
    """A file handle on `<path>.tmp` that becomes `path` (fsynced, renamed) when the block ends without error.

    Any error removes the temporary file and leaves `path` as it was; an `OSError` is raised as `WriteFailed`
    naming `path`."""
    path = Path(path)
    tmp = tmp_name(path)
    try:
        with open(tmp, mode, **kwargs) as handle:
            yield handle
            handle.flush()  # the buffered tail can fail on a full disk: here, not after the rename
        fsync_replace(tmp, path)
    except BaseException as exc:
        discard(tmp)
        cause = os_error_in(exc)
        if cause is not None:
            raise WriteFailed(path, cause) from exc
        raise


def os_error_in(exc: BaseException) -> OSError | None:
    """`exc` if it is an `OSError`, else the one behind it: torch's checkpoint writer reports a full disk as a
    `RuntimeError` ("unexpected pos") raised while handling the `OSError`."""
    return next((cur for cur in exception_chain(exc) if isinstance(cur, OSError)), None)


def write_text(path: Path | str, text: str) -> None:
    """`text` as the whole content of `path`, atomically (see `atomic_open`)."""
    with atomic_open(path, "w", encoding="utf-8") as handle:
        handle.write(text)


def write_bytes(path: Path | str, data: bytes) -> None:
    """`data` as the whole content of `path`, atomically (see `atomic_open`)."""
    with atomic_open(path, "wb") as handle:
        handle.write(data)


def append_whole(path: Path | str, text: str) -> None:
    """Append `text` to `path` entirely or not at all: a failed write is cut back to the file's earlier length
    (truncating frees space, so it works on a full disk), and raised as `WriteFailed`."""
    path = Path(path)
    data = text.encode("utf-8")
    try:
        handle = open(path, "ab", buffering=0)  # noqa: SIM115  (unbuffered: nothing is written behind our back)
    except OSError as exc:
        raise WriteFailed(path, exc) from exc
    with handle:
        start = handle.seek(0, os.SEEK_END)
        try:
            view = memoryview(data)
            while view:  # a raw write may write part of the bytes
                view = view[handle.write(view) :]
            os.fsync(handle.fileno())
        except OSError as exc:
            with suppress(OSError):
                os.truncate(path, start)
            raise WriteFailed(path, exc) from exc


def jsonable(value: Any) -> Any:
    """`value` with 0-d tensors and NumPy scalars as Python numbers and every non-finite float as None, at any
    depth: strict JSON (no NaN/Infinity tokens, which other tools' parsers reject)."""
    if hasattr(value, "item") and callable(value.item) and getattr(value, "ndim", 0) == 0:
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {key: jsonable(item) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [jsonable(item) for item in value]
    return value


def write_json(path: Path, payload: dict[str, Any]) -> None:
    """`payload` as indented, strict JSON (non-finite floats as null); a reader never sees half a file."""
    write_text(path, json.dumps(jsonable(payload), indent=2, allow_nan=False) + "\n")


def read_json(path: Path) -> dict[str, Any] | None:
    """A JSON object from `path`; None when the file is absent, unreadable or not an object."""
    try:
        data = json.loads(Path(path).read_text())
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def read_results(run_dir: Path | str) -> dict[str, Any] | None:
    """A run directory's `results.json`; None when there is none. A file that exists but cannot be read as a
    JSON object is `{"status": "unreadable", "error": ...}`."""
    path = Path(run_dir) / RESULTS_FILE
    if not path.is_file():
        return None
    try:
        record = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        return {"status": UNREADABLE, "error": f"unreadable {RESULTS_FILE}: {' '.join(str(exc).split())}"}
    if not isinstance(record, dict):
        return {"status": UNREADABLE, "error": f"{RESULTS_FILE} is not a JSON object"}
    return record


def results_status(run_dir: Path | str) -> str | None:
    """`status` of the run's results.json (`ok`, `failed`, `interrupted`, `unreadable`); None when there is none."""
    record = read_results(run_dir)
    return None if record is None else str(record.get("status"))
