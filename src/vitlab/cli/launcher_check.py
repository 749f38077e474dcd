"""Check a multirun's launcher settings before Hydra launches anything.

Hydra resolves `hydra.launcher` (e.g. the submitit SLURM launcher's task and GPU counts) only when it submits
the sweep, and reports a failure there with a traceback. A `ConfigError` raised by one of vitlab's resolvers
(`${vitlab.slurm_devices:...}`) is found here first, by composing the same config, and reported as one
paragraph. Anything else is left to Hydra. No torch import: about half a second, and only for `-m`.
"""

from __future__ import annotations

from omegaconf import OmegaConf

from vitlab.cli.show_hydra import MULTIRUN_FLAGS, composed_overrides
from vitlab.compose import compose_config
from vitlab.errors import ConfigError, find_config_error


def check_launcher(config_name: str, argv: list[str]) -> None:
    """Raise the `ConfigError` behind an unresolvable launcher setting of a multirun, if there is one."""
    if not any(flag in argv for flag in MULTIRUN_FLAGS):
        return
    from hydra.errors import HydraException
    from omegaconf.errors import OmegaConfBaseException

    try:
        cfg = compose_config(config_name, composed_overrides(argv), return_hydra_config=True)
    except (HydraException, OmegaConfBaseException):
        return  # a bad override: Hydra says it in its own words when it composes
    launcher = cfg.hydra.get("launcher") or {}
    for key in launcher:
        try:
            OmegaConf.select(launcher, str(key), throw_on_resolution_failure=True)
        except OmegaConfBaseException as exc:
            error = find_config_error(exc)
            if isinstance(error, ConfigError):
                raise error from None
