"""A composed config with one value changed, for the bad-input tests: composing costs ~1 s on 2 cores, so each
base is composed once and copied."""

from __future__ import annotations

import copy
import functools

from omegaconf import DictConfig, OmegaConf, open_dict

from conftest import compose_cfg


@functools.cache
def composed(*overrides: str) -> DictConfig:
    return compose_cfg(list(overrides))


def with_value(key: str, value: object, base: tuple[str, ...] = ("optim=sgd", "data.train_per_class=5")) -> DictConfig:
    """A copy of `composed(*base)` with `key` set to `value` (default base: sgd has momentum; digits has every
    data key)."""
    cfg = copy.deepcopy(composed(*base))
    with open_dict(cfg):
        OmegaConf.update(cfg, key, value, force_add=True)
    return cfg
