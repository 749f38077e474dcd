"""Check a multirun's launcher and sweeper settings before Hydra launches anything.

Hydra resolves `hydra.launcher` (e.g. the submitit SLURM launcher's task and GPU counts) only when it submits
the sweep, and reports a failure there with a traceback. Here the same config is composed first (one job of
the sweep: each sweep override at its first value), and three things are said as one paragraph instead: a
`ConfigError` raised by one of vitlab's resolvers (`${vitlab.slurm_devices:...}`), a SLURM launcher on a
machine without SLURM's `sbatch`/`srun` (submitit needs both where it submits), and an Optuna search space that
cannot be sampled (vitlab.cli.sweep_check). Anything else is left to Hydra. No torch import: about half a
second, and only for a multirun (`-m`, or `hparams_search=...`, which sets `hydra.mode`).
"""

from __future__ import annotations

import shutil

from omegaconf import DictConfig, OmegaConf

import vitlab.cli.resolvers  # noqa: F401  (the launcher's ${vitlab.slurm_devices:...} resolves here too)
from vitlab.cli.show_hydra import MULTIRUN_FLAGS, composed_overrides
from vitlab.compose import compose_config
from vitlab.errors import ConfigError, find_config_error

SLURM_TOOLS = ("sbatch", "srun")  # submitit submits with sbatch and refuses to start where srun is missing
SWEEP_KEYS = ("hparams_search", "hydra.mode", "hydra/sweeper")  # overrides that can make a run a multirun


def check_launcher(config_name: str, argv: list[str]) -> None:
    """Raise the `ConfigError` behind a launcher or sweeper setting of a multirun that cannot work, if any."""
    multirun_flag = any(flag in argv for flag in MULTIRUN_FLAGS)
    overrides = composed_overrides(argv)
    if not multirun_flag and not any(o.lstrip("+~").startswith(SWEEP_KEYS) for o in overrides):
        return
    from hydra.errors import HydraException
    from omegaconf.errors import OmegaConfBaseException

    try:
        cfg = compose_config(config_name, one_job(overrides), return_hydra_config=True)
    except (HydraException, OmegaConfBaseException):
        return  # a bad override: Hydra says it in its own words when it composes
    if not multirun_flag and str(cfg.hydra.get("mode")) not in ("MULTIRUN", "RunMode.MULTIRUN"):
        return
    check_launcher_values(cfg)
    check_slurm_tools(cfg, overrides)
    from vitlab.cli.sweep_check import check_search_space

    check_search_space(cfg, overrides, config_name)


def one_job(overrides: list[str]) -> list[str]:
    """The overrides of one job of the sweep: a choice or range at its first value, an interval left out
    (Hydra's compose API refuses sweeps)."""
    from hydra.core.override_parser.overrides_parser import OverridesParser
    from hydra.core.override_parser.types import Transformer
    from hydra.errors import HydraException

    parser = OverridesParser.create()
    out = []
    for text in overrides:
        try:
            override = parser.parse_override(text)
        except HydraException:
            out.append(text)  # composing fails on it, and Hydra says why when it starts
            continue
        if not override.is_sweep_override():
            out.append(text)
        elif override.is_choice_sweep() or override.is_range_sweep():
            try:
                first = next(iter(override.sweep_iterator(transformer=Transformer.encode)), None)
            except ValueError:  # e.g. range(8, 64, step=0): sweep_check says why
                continue
            if first is not None:
                out.append(f"{override.get_key_element()}={first}")
    return out


def check_launcher_values(cfg: DictConfig) -> None:
    """Resolve every `hydra.launcher` value; a vitlab resolver's `ConfigError` is raised as it is."""
    from omegaconf.errors import OmegaConfBaseException

    launcher = cfg.hydra.get("launcher") or {}
    for key in launcher:
        try:
            OmegaConf.select(launcher, str(key), throw_on_resolution_failure=True)
        except OmegaConfBaseException as exc:
            error = find_config_error(exc)
            if isinstance(error, ConfigError):
                raise error from None


def check_slurm_tools(cfg: DictConfig, overrides: list[str]) -> None:
    """A SLURM launcher needs SLURM's commands on this machine's PATH: say which are missing, before submitting."""
    target = str((cfg.hydra.get("launcher") or {}).get("_target_", ""))
    if not target.endswith("SlurmLauncher"):
        return
    missing = [tool for tool in SLURM_TOOLS if shutil.which(tool) is None]
    if missing:
        choices = cfg.hydra.runtime.choices
        source = f"hydra/launcher={choices.get('hydra/launcher')}"
        way_out = f"leave out {source}"
        local = next((o for o in overrides if o.startswith("local=")), None)
        if local is not None:
            way_out = f"leave out {local}"
        elif not any(o.startswith("hydra/launcher=") for o in overrides) and choices.get("local"):
            local = f"local={choices.get('local')}"  # a machine config (configs/local/default.yaml) picked up unasked
            way_out = "add ~local to leave out that machine config"
        if local is not None:
            source = f"{local} (which sets {source})"
        raise ConfigError(
            f"{source} submits to SLURM, but {' and '.join(missing)} {'is' if len(missing) == 1 else 'are'} not on "
            "this machine's PATH: it is not a SLURM login node. Submit from the cluster's login node (where "
            f"`sbatch --version` answers), or run the sweep here with Hydra's basic launcher: {way_out}."
        )
