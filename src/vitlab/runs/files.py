"""A run's files on disk: durable atomic replacement, JSON written one way and read one way.

Every JSON file vitlab writes for a run (`results.json`, `run.json`, a table's failed cell) goes through
`write_json`; every reader of a run's status goes through `read_results` / `results_status`, so a file that
cannot be read means the same thing everywhere: status `unreadable` (not ok: a table runs the row again, a
resume refuses nothing because of it).
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import Any

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
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(jsonable(payload), indent=2, allow_nan=False) + "\n")
    fsync_replace(tmp, path)


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
