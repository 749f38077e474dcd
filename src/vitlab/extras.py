"""Optional dependencies: what each extra of `pip install 'vitlab[...]'` brings, and one paragraph when it is missing.

The core install runs the default experiment (digits, CSV/W&B logging, every model slot). Options that need
more say which extra to install instead of failing deep inside an import.
"""

from __future__ import annotations

import importlib
import importlib.util
from collections.abc import Sequence
from types import ModuleType

from vitlab.errors import ConfigError

# extra -> (import name of its main package, what needs it); keep in step with pyproject's optional-dependencies
EXTRAS: dict[str, tuple[str, str]] = {
    "sweep": ("optuna", "hparams_search=optuna (vitlab's Optuna sweeper, hydra/sweeper=vitlab_optuna)"),
    "peft": ("peft", "model/peft=lora and lora_qv (Hugging Face PEFT)"),
    "ode": ("torchdiffeq", "adaptive solvers of the memory-ODE head (model.head.solver=dopri5, ...)"),
    "slurm": ("hydra_plugins.hydra_submitit_launcher", "hydra/launcher=submitit_slurm|submitit_local"),
    "tensorboard": ("tensorboard", "logger=tensorboard and logger=many"),
    "plots": ("matplotlib", "vitlab-report, the figures of a run (figures/*.png) and of vitlab-reproduce/bench"),
    "data": ("webdataset", "vitlab-data pack and prepare (webdataset's tar writer; reading shards needs nothing)"),
}


SWEEP_ARGS = {("hparams_search", "optuna"), ("hydra/sweeper", "vitlab_optuna")}  # what selects vitlab's sweeper


class MissingExtra(ConfigError):
    """An option needs a package of an extra that is not installed."""


def missing_extra_message(extra: str, option: str | None = None) -> str:
    module, needs = EXTRAS[extra]
    return (
        f"{option or needs} needs the optional package `{module.split('.')[-1]}`, which is not installed. "
        f"Install the extra: pip install 'vitlab[{extra}]' (or 'vitlab[all]' for every option; a checkout's "
        "`make install` installs them all)."
    )


def require(extra: str, option: str | None = None) -> ModuleType:
    """Import the main package of `extra`, or raise `MissingExtra` naming the pip command."""
    module = EXTRAS[extra][0]
    try:
        return importlib.import_module(module)
    except ModuleNotFoundError as exc:
        if exc.name is None or not module.startswith(exc.name):
            raise  # a dependency *of* the package is broken: keep the real error
        raise MissingExtra(missing_extra_message(extra, option)) from exc


def is_installed(extra: str) -> bool:
    """Whether the extra's main package can be found (without importing it)."""
    try:
        return importlib.util.find_spec(EXTRAS[extra][0]) is not None
    except (ModuleNotFoundError, ValueError):  # its parent package is missing, or a stub stands in for it
        return False


def check_argv(argv: Sequence[str]) -> None:
    """Hydra plugins are config groups: without the plugin, Hydra reports a missing config file, not the extra.
    Name the extra before Hydra composes."""
    for arg in argv:
        key, _, value = arg.lstrip("+~").partition("=")
        if key == "hydra/launcher" and value.startswith("submitit") and not is_installed("slurm"):
            raise MissingExtra(missing_extra_message("slurm", arg))
        if (key, value) in SWEEP_ARGS and not is_installed("sweep"):
            raise MissingExtra(missing_extra_message("sweep", arg))
