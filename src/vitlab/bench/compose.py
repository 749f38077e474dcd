"""The training config as `vitlab-train` composes it, for benches that measure what a run would build.

Benches take their models from `configs/model/...` through Hydra instead of keeping their own registry, so a
bench and a training run cannot drift apart (a new kernel option, a changed default, lands in both).
"""

from __future__ import annotations

from collections.abc import Sequence

from omegaconf import DictConfig


def compose_train(overrides: Sequence[str]) -> DictConfig:
    """The `vitlab-train` config with `overrides` (no `hydra` node). Clears any global Hydra state first:
    the caller may itself be a Hydra app (`vitlab-bench`), and its own config is already composed."""
    from hydra import compose, initialize_config_module
    from hydra.core.global_hydra import GlobalHydra

    from vitlab.configs import CONFIG_MODULE

    GlobalHydra.instance().clear()
    with initialize_config_module(CONFIG_MODULE, version_base="1.3", job_name="train"):
        return compose("train", overrides=list(overrides))
