"""Check an Optuna search before Hydra starts: its settings, every parameter of its space, and each choice composes.

vitlab's sweeper (hydra_plugins.vitlab_optuna, docs/reproduce.md "Hyper-parameter search") checks its settings and
space itself, but only once Hydra runs the multirun. Here the same checks run on the composed config before
Hydra starts -- an unknown sampler or pruner, an option that does not apply to it, `n_trials=0`, a storage that
cannot be written, an empty interval or a log interval touching 0 -- and a `choice` of a config group option that
does not exist is composed (it would fail in the launcher, after Optuna recorded the trial as running). Each is
one paragraph naming the key (exit status 2), and nothing is written: not the study, not the sweep directory.

`hydra.sweeper.params.<key>=<space>` (the form our docs give) cannot be parsed by Hydra itself: it refuses a
sweep of its own config, and the dotted key (`optim.lr`) is read as a path. The sweeper appends its command-line
arguments to `params` (a later key wins), so the same search is `<key>=<space>`: `sweeper_params_as_overrides`
rewrites it so before Hydra sees the command line, and refuses the keys of hydra-optuna-sweeper that vitlab's
sweeper spells differently, naming the new spelling.
"""

from __future__ import annotations

import importlib.util
from typing import Any

from omegaconf import DictConfig, OmegaConf

from vitlab.errors import ConfigError

PARAMS_PREFIXES = ("hydra.sweeper.params.", "+hydra.sweeper.params.", "++hydra.sweeper.params.")
SWEEPER = "vitlab_optuna"
RETIRED = {  # hydra-optuna-sweeper's keys (before Optuna 4) -> what to write now
    "hydra.sweeper.max_failure_rate": "nothing: a failed trial is recorded as FAIL and the search goes on",
    "hydra.sweeper.search_space": "hydra.sweeper.params.<key>=<space>, e.g. 'tag(log, interval(1e-4, 1e-2))'",
    "hydra.sweeper.custom_search_space": "hydra.sweeper.params.<key>=<space> (choice, range, interval)",
    "hydra.sweeper.sampler._target_": "hydra.sweeper.sampler.name=tpe|gp|cmaes|random|grid",
}


def sweeper_params_as_overrides(argv: list[str]) -> list[str]:
    """`argv` with each `hydra.sweeper.params.<key>=<space>` written as the sweeper argument `<key>=<space>`;
    `ConfigError` for a retired key of hydra-optuna-sweeper."""
    out = []
    for arg in argv:
        _refuse_retired(arg)
        prefix = next((p for p in PARAMS_PREFIXES if arg.startswith(p) and "=" in arg), None)
        out.append(arg[len(prefix) :] if prefix else arg)
    return out


def _refuse_retired(arg: str) -> None:
    from hydra_plugins.vitlab_optuna.config import PRUNERS, SAMPLERS

    key, _, value = arg.lstrip("+~").partition("=")
    new = RETIRED.get(key)
    if (new is None and not key.startswith("hydra/sweeper")) or _installed("hydra_plugins.hydra_optuna_sweeper"):
        return  # nothing retired, or hydra-optuna-sweeper is installed: its keys are the user's choice
    if key in ("hydra/sweeper/sampler", "hydra/sweeper/pruner"):
        kind = key.rsplit("/", 1)[1]
        names = SAMPLERS if kind == "sampler" else PRUNERS
        new = f"hydra.sweeper.{kind}.name={value} (one of {', '.join(names)})"
    elif key == "hydra/sweeper" and value == "optuna":
        new = f"hydra/sweeper={SWEEPER} (what hparams_search=optuna sets; the same params, n_trials, study_name)"
    if new is not None:
        raise ConfigError(
            f"{arg} is a setting of hydra-optuna-sweeper, which vitlab no longer uses (it pins Optuna 2); vitlab's "
            f"own Optuna sweeper (hydra/sweeper={SWEEPER}) takes {new} instead. See docs/reproduce.md."
        )


def _installed(module: str) -> bool:
    try:
        return importlib.util.find_spec(module) is not None
    except ModuleNotFoundError:
        return False


def check_search_space(cfg: DictConfig, overrides: list[str], config_name: str = "train") -> None:
    """Raise `ConfigError` for the first setting or parameter of an Optuna search that cannot work.
    `cfg`: one job's composed config with its `hydra` node; `overrides`: the command line's overrides (with
    `sweeper_params_as_overrides` applied, and a --config-dir as `hydra.searchpath`)."""
    sweeper = cfg.hydra.get("sweeper") or {}
    if not str(sweeper.get("_target_", "")).startswith(f"hydra_plugins.{SWEEPER}."):
        return
    from hydra_plugins.vitlab_optuna import space, study

    settings = OmegaConf.create(OmegaConf.to_container(sweeper, resolve=False))
    for key in ("storage", "study_name"):  # e.g. ${paths.log_dir}: resolved in the whole config
        settings[key] = OmegaConf.select(cfg, f"hydra.sweeper.{key}", throw_on_resolution_failure=False)
    study.check_settings(settings)
    specs = [(f"{key}={value}", "hydra.sweeper.params") for key, value in (sweeper.get("params") or {}).items()]
    arguments = [(o, "the command line") for o in overrides if not o.lstrip("+~").startswith("hydra")]
    distributions, _ = space.parse_space([*specs, *_parsable(arguments)])
    if settings.sampler.name == "grid":
        space.grid(distributions)
    fixed = [o for o in overrides if _is_fixed(o)]
    for text, source in [*specs, *arguments]:
        _check_choices_compose(text, source, fixed, config_name)


def _parsable(specs: list[tuple[str, str]]) -> list[tuple[str, str]]:
    """The command line's overrides Hydra can parse (the others: Hydra says why in its own words)."""
    from hydra.core.override_parser.overrides_parser import OverridesParser
    from hydra.errors import HydraException

    parser = OverridesParser.create()
    out = []
    for text, source in specs:
        try:
            parser.parse_override(text)
        except HydraException:
            continue
        out.append((text, source))
    return out


def _is_fixed(text: str) -> bool:
    """A command-line override every trial gets (not a sweep), or a Hydra setting such as --config-dir's path."""
    from hydra.core.override_parser.overrides_parser import OverridesParser
    from hydra.errors import HydraException

    if text.lstrip("+~").startswith("hydra"):
        return True
    try:
        return not OverridesParser.create().parse_override(text).is_sweep_override()
    except HydraException:
        return False


def _check_choices_compose(text: str, source: str, fixed: list[str], config_name: str) -> None:
    """Each string choice (a config group's option, typically) composes with the fixed overrides: a trial whose
    config cannot compose fails in the launcher, after Optuna has recorded it as running."""
    from hydra.core.override_parser.overrides_parser import OverridesParser
    from hydra.core.override_parser.types import Transformer
    from hydra.errors import HydraException
    from omegaconf.errors import OmegaConfBaseException

    from hydra_plugins.vitlab_optuna.space import where
    from vitlab.compose import compose_config

    override: Any = OverridesParser.create().parse_override(text)
    if not override.is_choice_sweep():
        return
    key = override.get_key_element()
    for choice in override.sweep_iterator(transformer=Transformer.encode):
        if not isinstance(choice, str):
            continue  # a number or a boolean always composes; only its range is checked (check_config)
        try:
            compose_config(config_name, [*fixed, f"{key}={choice}"])
        except (HydraException, OmegaConfBaseException) as exc:
            reason = " ".join(str(exc).split("\nConfig search path")[0].split())
            raise ConfigError(f"{where(text, source)} offers {choice}, which does not compose: {reason}") from None
