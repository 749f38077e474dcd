"""User-facing errors: bad configuration or input that the user can fix.

The CLI prints these as one paragraph, without a Python traceback, and exits non-zero.
Anything else is a bug and keeps its traceback.
"""

from __future__ import annotations

import errno
import os
from collections.abc import Iterator
from pathlib import Path


class ConfigError(ValueError):
    """A configuration key, file or data set that cannot be used as given.

    The message names the key, what was given and what is allowed (or how to fix it).
    """


def exception_chain(exc: BaseException | None) -> Iterator[BaseException]:
    """`exc`, then the exceptions behind it (`__cause__`, else `__context__`), each once: Hydra's instantiate,
    Lightning and torch wrap the error that says what went wrong."""
    seen: set[int] = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        yield exc
        exc = exc.__cause__ or exc.__context__


def find_config_error(exc: BaseException) -> ConfigError | None:
    """Return the `ConfigError` behind `exc` (Hydra's instantiate wraps errors from targets), if any."""
    return next((cur for cur in exception_chain(exc) if isinstance(cur, ConfigError)), None)


def user_message(error: BaseException) -> str:
    """The paragraph of a user error, also when a DataLoader worker raised it: torch re-raises it in the main
    process with the worker's traceback in front, and only the last line is the paragraph."""
    text = str(error)
    if text.startswith("Caught ") and "Original Traceback" in text:
        return text.rstrip().splitlines()[-1].split("ConfigError: ", 1)[-1]
    return text


class NonFiniteLoss(ConfigError):
    """The training loss became NaN or infinite; training on it would only produce a meaningless model."""


def unreadable_file_reason(exc: BaseException) -> str:
    """Why torch or safetensors could not read a file, in one line — never torch's advice to load with
    `weights_only=False`, which would run whatever code the file holds."""
    text = str(exc)
    if "Weights only load failed" in text or type(exc).__name__ == "UnpicklingError":
        return (
            "it holds pickled Python objects (a whole model object or custom classes), which vitlab never unpickles: "
            "that could run arbitrary code; save a state dict instead, torch.save(model.state_dict(), path)"
        )
    first = text.strip().splitlines()[0] if text.strip() else type(exc).__name__
    return first


# errnos that mean the storage, not the program, failed: a run can continue once the storage is fixed
STORAGE_ERRNOS = {
    errno.ENOSPC: "no space left on the device",
    errno.EDQUOT: "the disk quota is exceeded",
    errno.EROFS: "the file system is read-only",
    errno.EIO: "an input/output error (a failing disk, or a network file system that went away)",
    errno.EFBIG: "the file is larger than the file system allows",
}


class WriteFailed(ConfigError):
    """A file could not be written (a full disk, a quota, a read-only or failing file system, no permission).

    The writer left nothing half-written under the file's name (see `vitlab.runs.files`); `way_out` says how
    to go on. `vitlab.cli.runner` adds the run directory to it.
    """

    def __init__(self, path: Path | str | None, error: OSError, way_out: str | None = None) -> None:
        self.path, self.error = path, error
        self.errno = error.errno
        self.way_out = way_out or "Free space (or fix the file system), then run the command again."
        super().__init__(f"{self.what()}. {self.way_out}")

    def what(self) -> str:
        """`could not write <file>: <what the errno means> (ENOSPC)`."""
        code = errno.errorcode.get(self.errno or -1)
        meaning = STORAGE_ERRNOS.get(self.errno or -1) or (
            os.strerror(self.errno) if self.errno else " ".join(str(self.error).split())
        )
        return f"could not write {self.path or 'a file'}: {meaning}" + (f" ({code})" if code else "")

    def with_way_out(self, way_out: str) -> WriteFailed:
        """The same failure with another way out (e.g. the resume command of the run it happened in)."""
        return WriteFailed(self.path, self.error, way_out)

    def with_path(self, path: Path | str) -> WriteFailed:
        """The same failure named by another file (the final name of a temporary file)."""
        return WriteFailed(path, self.error, self.way_out)


def find_write_failure(exc: BaseException) -> WriteFailed | None:
    """The storage failure behind `exc`: a `WriteFailed` vitlab raised, or an `OSError` from any writer (Lightning,
    a logger) whose errno says the storage failed (`STORAGE_ERRNOS`). The whole chain is searched and the
    earliest `WriteFailed` wins (on a full disk Lightning's clean-up, a logger's last flush, fails too, after the
    write that stopped the run); a bare `OSError` counts only when vitlab's writers raised none."""
    named: WriteFailed | None = None
    bare: WriteFailed | None = None
    for cur in exception_chain(exc):
        if isinstance(cur, WriteFailed):
            named = cur
        elif isinstance(cur, OSError) and cur.errno in STORAGE_ERRNOS:
            bare = WriteFailed(cur.filename, cur)
    return named or bare
