"""User-facing errors: bad configuration or input that the user can fix.

The CLI prints these as one paragraph, without a Python traceback, and exits non-zero.
Anything else is a bug and keeps its traceback.
"""

from __future__ import annotations

import difflib
import inspect
import re
from typing import Any


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


_UNEXPECTED = re.compile(r"(?P<func>[\w.]+)\(\) got an unexpected keyword argument '(?P<arg>\w+)'")


def unknown_key_error(exc: BaseException, cfg: Any) -> ConfigError | None:
    """A `ConfigError` for a key the target does not take (`+data.batchsize=32`: Hydra instantiates the data
    module with `batchsize` and the constructor refuses it), naming the key, the target's options and the
    closest ones; None if `exc` is not that."""
    from omegaconf import DictConfig

    cause, seen = exc, set()
    while cause is not None and id(cause) not in seen and not isinstance(cause, TypeError):
        seen.add(id(cause))
        cause = cause.__cause__ or cause.__context__
    match = _UNEXPECTED.search(str(cause)) if cause is not None else None
    if match is None or not isinstance(cfg, DictConfig):
        return None
    func, arg = match["func"].split(".")[0], match["arg"]
    untargeted = {"ClassificationModule": ("module", "vitlab.training.module.ClassificationModule")}
    if func in untargeted:  # built by vitlab from a config node without `_target_`
        path, target = untargeted[func]
        options = [o for o in _options_of(target) if o not in ("model", "num_classes", "optim", "scheduler", "config")]
        close = difflib.get_close_matches(arg, options, n=2)
        hint = f" Did you mean {' or '.join(f'{path}.{c}' for c in close)}?" if close else ""
        return ConfigError(f"{path}.{arg} is not an option of {path}. Its options: {', '.join(options)}.{hint}")
    for path, node in _targets(cfg, ""):
        if str(node.get("_target_")).rsplit(".", 1)[-1] != func:
            continue
        options = _options_of(str(node["_target_"]))
        close = difflib.get_close_matches(arg, options, n=2)
        hint = f" Did you mean {' or '.join(f'{path}.{c}' for c in close)}?" if close else ""
        return ConfigError(
            f"{path}.{arg} is not an option of {path} ({node['_target_']}). Its options: {', '.join(options)}.{hint}"
        )
    return None


def _targets(node: Any, path: str) -> list[tuple[str, Any]]:
    """(dotted path, node) of every config node with a `_target_`, depth first."""
    from omegaconf import DictConfig

    found = []
    if isinstance(node, DictConfig):
        if "_target_" in node:
            found.append((path, node))
        for key in node:
            child = node._get_node(key)
            if isinstance(child, DictConfig) and str(key) != "hydra":
                found.extend(_targets(child, f"{path}.{key}" if path else str(key)))
    return found


def _options_of(target: str) -> list[str]:
    """The keyword parameters of a `_target_` (a class's constructor or a function), without `self`."""
    from hydra.utils import get_object

    try:
        signature = inspect.signature(get_object(target))
    except (ValueError, TypeError, ImportError):
        return []
    kinds = (inspect.Parameter.POSITIONAL_OR_KEYWORD, inspect.Parameter.KEYWORD_ONLY)
    return [n for n, p in signature.parameters.items() if p.kind in kinds and n not in ("self", "vit")]


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
