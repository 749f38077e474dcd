"""Config keys and values renamed so that one idea has one name; the old spelling works for one release.

An old spelling still takes effect (never silently ignored) and logs one line naming the old and the new
spelling (`deprecated`); given together with its new spelling and another value it is refused. In the next
release the old spellings go, and with them this table.

`RENAMED` holds the plain renames of `vitlab-bench` keys (same value, new name): a command line is rewritten
before Hydra composes it (`upgrade_overrides`), a composed config that still holds an old key, from a user's
own config file, is moved over (`upgrade_config`). Two renames change a value's form and are read by the data
modules themselves: `data.normalize=<preset>` (vtab1k) becomes `data.mean`/`data.std`, and digits'
`data.augment=light` is the default mapping `data.augment={rotate: 10, translate: 0.1, zoom: [0.9, 1.1]}`.
`optimized_metric` (train.yaml) is `optimised_metric`, spelt as the project's prose and its other keys
(`stabiliser`) are; its old key stays in train.yaml as null for one release and is read by `read_renamed`.

Why the bench names changed: `batch` is the images (sequences) per step, what training calls `batch_size`;
the bench's `warmup`/`warmup_steps` are repetitions that run but are not timed, not a learning-rate warm-up
(`scheduler.warmup_epochs`), so they are now `untimed_rounds` (whole interleaved rounds) or `untimed_steps`
(steps within a round), naming what they do and their unit.
"""

from __future__ import annotations

import logging
from collections.abc import Collection, Mapping, Sequence
from typing import Any

from vitlab.errors import ConfigError

log = logging.getLogger("vitlab")

# old key -> new key (vitlab-bench's config, configs/bench.yaml)
RENAMED: Mapping[str, str] = {
    "attention.batch": "attention.batch_size",
    "attention.warmup": "attention.untimed_rounds",
    "transfer.batch": "transfer.batch_size",
    "transfer.warmup": "transfer.untimed_rounds",
    "transfer.head_batch": "transfer.head_batch_size",
    "model_bench.batch": "model_bench.batch_size",
    "model_bench.warmup": "model_bench.untimed_steps",
    "overhead.warmup_steps": "overhead.untimed_steps",
    "compile.batch": "compile.batch_size",
}


def deprecated(old: str, new: str) -> None:
    """The one line an old spelling logs each time it is used."""
    log.warning("%s is deprecated and goes in the next release; use %s (it is applied as that now).", old, new)


def read_renamed(cfg: Any, old: str, new: str, default: Any) -> Any:
    """The value of key `new`, or of its old spelling `old` where a config file or the command line set that (not
    null): then with one `deprecated` line, and refused when `new` was also set, to another value than `old`'s."""
    from omegaconf import OmegaConf

    value = OmegaConf.select(cfg, new, default=None)
    value = default if value is None else value
    old_value = OmegaConf.select(cfg, old, default=None)
    if old_value is None:
        return value
    deprecated(old, new)
    if value not in (old_value, default):
        raise ConfigError(
            f"{old}={old_value} and {new}={value} are one setting ({old} is its old name) with two values; give "
            f"only {new}."
        )
    return old_value


def _split(override: str) -> tuple[str, str, str | None]:
    """(prefix, key, `=value` or None) of an override: `+a.b=1` -> ('+', 'a.b', '=1'), `~a.b` -> ('~', 'a.b', None)."""
    prefix = override[: len(override) - len(override.lstrip("+~"))]
    body = override[len(prefix) :]
    key, sep, value = body.partition("=")
    return prefix, key, (sep + value) if sep else None


def upgrade_overrides(overrides: Sequence[str], renamed: Mapping[str, str] = RENAMED) -> list[str]:
    """`overrides` with every old key spelled new, one `deprecated` line for each; an old key given with its new
    key is refused unless both carry the same value (then the old one is dropped)."""
    given = {_split(o)[1]: _split(o)[2] for o in overrides}
    upgraded = []
    for override in overrides:
        prefix, key, value = _split(override)
        new = renamed.get(key)
        if new is None:
            upgraded.append(override)
            continue
        deprecated(key, new)
        if new in given:
            if given[new] != value:
                raise ConfigError(
                    f"{key}{value or ''} and {new}{given[new] or ''} are one setting ({key} is its old name) with "
                    f"two values; give only {new}."
                )
            continue
        upgraded.append(f"{prefix}{new}{value or ''}")
    return upgraded


def upgrade_config(cfg: Any, given: Collection[str] = (), renamed: Mapping[str, str] = RENAMED) -> None:
    """Move each old key a composed config holds (a user's own config file) to its new key, in place, with one
    `deprecated` line. `given`: the keys set on the command line; an old key whose new key is among them with
    another value is refused (the file's old key would silently lose)."""
    from omegaconf import OmegaConf, open_dict

    for old, new in renamed.items():
        parent, _, leaf = old.rpartition(".")
        node = OmegaConf.select(cfg, parent) if parent else cfg
        if node is None or not OmegaConf.is_dict(node) or leaf not in node:
            continue
        value = node[leaf]
        deprecated(old, new)
        if new in given and OmegaConf.select(cfg, new) != value:
            raise ConfigError(
                f"{old}={value} (in a config file) and {new}={OmegaConf.select(cfg, new)} (on the command line) are "
                f"one setting ({old} is its old name) with two values; give only {new}."
            )
        with open_dict(node):
            del node[leaf]
        OmegaConf.update(cfg, new, value, force_add=True)
