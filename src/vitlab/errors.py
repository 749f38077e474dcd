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
