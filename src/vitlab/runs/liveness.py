"""Whether the process of a run's open attempt still runs, from the run directory alone (docs/runs.md#watching-a-sweep).

On the host that started it, the run directory's `.lock` (the lock every attempt holds, dropped by the kernel when
the process dies, even on kill -9) says so; elsewhere (another node, a copied folder), a file of the run written
within `stale_after` seconds does.
"""

from __future__ import annotations

import contextlib
import os
import socket
from pathlib import Path
from typing import Any


def alive(run_dir: Path, attempt: dict[str, Any], written: float, stale_after: float, now: float) -> bool:
    """Whether the process of an attempt without an end still runs (the module docstring says how)."""
    if attempt.get("host") == socket.gethostname():
        held = lock_held(run_dir)
        if held is not None:
            return held
        pid = attempt.get("pid")
        if isinstance(pid, int):
            try:
                os.kill(pid, 0)
            except ProcessLookupError:
                return False
            except OSError:  # another user's process: it exists
                return True
            return True
    return now - written < stale_after


def lock_held(run_dir: Path) -> bool | None:
    """Whether a process holds the run directory's `.lock` (False without one); None when it cannot be
    opened. Read-only: it opens the file for reading and asks for a shared lock, so a copy on a read-only
    disk can be checked and a live run is never disturbed."""
    import fcntl

    path = run_dir / ".lock"
    if not path.exists():
        return False
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return None
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except OSError:
        return True
    else:
        fcntl.flock(fd, fcntl.LOCK_UN)
        return False
    finally:
        os.close(fd)


def last_write(run_dir: Path) -> float:
    """The newest modification time of a file in the run directory, its checkpoints or its CSV log."""
    newest = 0.0
    for folder in (run_dir, run_dir / "checkpoints", run_dir / "csv", *run_dir.glob("csv/version_*")):
        with contextlib.suppress(OSError):
            for entry in os.scandir(folder):
                with contextlib.suppress(OSError):
                    newest = max(newest, entry.stat(follow_symlinks=False).st_mtime)
    return newest
