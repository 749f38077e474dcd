"""The one way vitlab composes its configs outside a Hydra entry point: the packaged configs, Hydra's compose API.

Everything that needs the config a command line *would* compose (a table checking its rows before it launches
them, a bench building the model a run would build, `--cfg hydra --resolve`, `resume=auto` looking for the run
directory, the launcher check of a multirun) calls `compose_config`. Hydra keeps one global instance; a caller may
itself be a Hydra app whose config is already composed, so the instance is cleared before and after.
"""

from __future__ import annotations

from collections.abc import Sequence

from omegaconf import DictConfig

from vitlab.configs import CONFIG_MODULE


def compose_config(
    config_name: str = "train",
    overrides: Sequence[str] = (),
    *,
    return_hydra_config: bool = False,
) -> DictConfig:
    """`config_name` (train, eval, bench, ...) from the packaged configs with `overrides` applied, as the console
    script of that name composes it. Raises Hydra's and OmegaConf's own exceptions for a bad override.
    `return_hydra_config` keeps the `hydra:` node (unresolved: interpolations such as `${hydra:runtime...}`
    resolve only once a caller has set `HydraConfig`)."""
    from hydra import compose, initialize_config_module
    from hydra.core.global_hydra import GlobalHydra

    GlobalHydra.instance().clear()
    try:
        # job_name: what Hydra derives from the entry point's module (train.py -> train), e.g. the log file's name
        with initialize_config_module(CONFIG_MODULE, version_base="1.3", job_name=config_name):
            return compose(config_name, overrides=list(overrides), return_hydra_config=return_hydra_config)
    finally:
        GlobalHydra.instance().clear()


def compose_error(config_name: str, overrides: Sequence[str]) -> str | None:
    """None when `overrides` compose; else the error in one line (what a table's failed cell shows)."""
    try:
        compose_config(config_name, overrides)
    except Exception as exc:  # any composition error makes the row unrunnable; its message is what matters
        return f"the overrides do not compose: {type(exc).__name__}: {' '.join(str(exc).split())}"
    return None
