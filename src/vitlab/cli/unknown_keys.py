"""A key that a config's target does not take, as one paragraph naming the key, the target's options and the
closest ones (`+data.batchsize=32`: Hydra instantiates the data module, whose constructor refuses the key)."""

from __future__ import annotations

import difflib
import inspect
import re
from typing import Any

from vitlab.errors import ConfigError, exception_chain

_UNEXPECTED = re.compile(r"(?P<func>[\w.]+)\(\) got an unexpected keyword argument '(?P<arg>\w+)'")


def unknown_key_error(exc: BaseException, cfg: Any) -> ConfigError | None:
    """A `ConfigError` for a key the target does not take (`+data.batchsize=32`: Hydra instantiates the data
    module with `batchsize` and the constructor refuses it), naming the key, the target's options and the
    closest ones; None if `exc` is not that."""
    from omegaconf import DictConfig

    cause = next((cur for cur in exception_chain(exc) if isinstance(cur, TypeError)), None)
    match = _UNEXPECTED.search(str(cause)) if cause is not None else None
    if match is None or not isinstance(cfg, DictConfig):
        return None
    func, arg = match["func"].split(".")[0], match["arg"]
    if func == "ClassificationModule":  # built by vitlab from the `module` node, which has no `_target_`
        from vitlab.training.module import ClassificationModule

        path = "module"
        built_by_vitlab = ("model", "num_classes", "optim", "scheduler", "config")
        options = [o for o in _parameters(ClassificationModule) if o not in built_by_vitlab]
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
    """The keyword parameters of a config's `_target_` (a class's constructor or a function), without `self`."""
    from hydra.utils import get_object

    try:
        return _parameters(get_object(target))
    except ImportError:
        return []


def _parameters(obj: Any) -> list[str]:
    try:
        signature = inspect.signature(obj)
    except (ValueError, TypeError):
        return []
    kinds = (inspect.Parameter.POSITIONAL_OR_KEYWORD, inspect.Parameter.KEYWORD_ONLY)
    return [n for n, p in signature.parameters.items() if p.kind in kinds and n not in ("self", "vit")]
