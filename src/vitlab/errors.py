"""User-facing errors: bad configuration or input that the user can fix.

The CLI prints these as one paragraph, without a Python traceback, and exits non-zero.
Anything else is a bug and keeps its traceback.
"""

from __future__ import annotations


class ConfigError(ValueError):
    """A configuration key, file or data set that cannot be used as given.

    The message names the key, what was given and what is allowed (or how to fix it).
    """


def find_config_error(exc: BaseException) -> ConfigError | None:
    """Return the `ConfigError` behind `exc` (Hydra's instantiate wraps errors from targets), if any."""
    seen: set[int] = set()
    cur: BaseException | None = exc
    while cur is not None and id(cur) not in seen:
        if isinstance(cur, ConfigError):
            return cur
        seen.add(id(cur))
        cur = cur.__cause__ or cur.__context__
    return None
