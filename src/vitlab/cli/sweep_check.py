"""Check an Optuna search space before the sweeper opens its study: every parameter can be sampled and composed.

hydra-optuna-sweeper builds Optuna's distributions only once the study is open, so `tag(log, interval(0, 1e-2))`
(a log scale touching 0) or `interval(1e-2, 1e-4)` (low > high) ended in a traceback from inside the sweeper; a
`choice` of a config group option that does not exist failed in the launcher after the trial was asked for,
and that trial stayed RUNNING in the study for good. Here each parameter of the space (the composed
`hydra.sweeper.params` and the command line's sweep overrides) is turned into the sweeper's own distribution,
and each string choice is composed, before Hydra starts; a failure is one paragraph naming the parameter.

`hydra.sweeper.params.<key>=<space>` (the form our docs give) cannot be parsed by Hydra itself: it refuses a
sweep of its own config, and the dotted key (`optim.lr`) is read as a path. The sweeper appends its command-line
arguments to `params` (a later key wins), so the same search is `<key>=<space>`: `sweeper_params_as_overrides`
rewrites it so before Hydra sees the command line.
"""

from __future__ import annotations

from typing import Any

from omegaconf import DictConfig

from vitlab.errors import ConfigError

PARAMS_PREFIXES = ("hydra.sweeper.params.", "+hydra.sweeper.params.", "++hydra.sweeper.params.")


def sweeper_params_as_overrides(argv: list[str]) -> list[str]:
    """`argv` with each `hydra.sweeper.params.<key>=<space>` written as the sweeper argument `<key>=<space>`."""
    out = []
    for arg in argv:
        prefix = next((p for p in PARAMS_PREFIXES if arg.startswith(p) and "=" in arg), None)
        out.append(arg[len(prefix) :] if prefix else arg)
    return out


def check_search_space(cfg: DictConfig, overrides: list[str], config_name: str = "train") -> None:
    """Raise `ConfigError` for the first parameter of an Optuna search space that cannot be sampled or composed.
    `cfg`: one job's composed config with its `hydra` node; `overrides`: the command line's overrides (with
    `sweeper_params_as_overrides` applied, and a --config-dir as `hydra.searchpath`)."""
    sweeper = cfg.hydra.get("sweeper") or {}
    if "optuna" not in str(sweeper.get("_target_", "")).lower():
        return
    from hydra.core.override_parser.overrides_parser import OverridesParser
    from hydra.errors import HydraException

    parser = OverridesParser.create()
    params = sweeper.get("params") or {}
    specs = [(f"{key}={value}", "hydra.sweeper.params") for key, value in params.items()]
    specs += [(o, "the command line") for o in overrides if not o.lstrip("+~").startswith("hydra")]
    fixed: list[str] = []
    sweeps = []
    for text, source in specs:
        try:
            override = parser.parse_override(text)
        except HydraException:
            continue  # Hydra says it in its own words when it parses the command line
        if override.is_sweep_override():
            sweeps.append((override, text, source))
        elif source == "the command line":
            fixed.append(text)
    fixed += [o for o in overrides if o.lstrip("+~").startswith("hydra")]  # e.g. a --config-dir's search path
    for override, text, source in sweeps:
        _check_distribution(override, text, source)
    for override, text, source in sweeps:
        _check_choices_compose(override, text, source, fixed, config_name)


def _where(text: str, source: str) -> str:
    return f"The Optuna search space's {text.split('=', 1)[0]} ({source}: {text})"


def _check_distribution(override: Any, text: str, source: str) -> None:
    """The sweeper's own conversion to an Optuna distribution, with the bounds said plainly when they are wrong."""
    from hydra.core.override_parser.types import IntervalSweep, RangeSweep
    from hydra_plugins.hydra_optuna_sweeper._impl import create_optuna_distribution_from_override

    value = override.value()
    where = _where(text, source)
    if isinstance(value, IntervalSweep):
        low, high, log = value.start, value.end, "log" in value.tags
        if low > high:
            raise ConfigError(
                f"{where} has low {low:g} > high {high:g}: an interval is written low first, e.g. "
                f"interval({high:g}, {low:g})."
            )
        if log and low <= 0:
            raise ConfigError(
                f"{where} is on a log scale but its low bound is {low:g}: a log interval needs 0 < low <= high "
                f"(e.g. tag(log, interval({high / 100:g}, {high:g}))); drop tag(log, ...) for a linear interval."
            )
    if isinstance(value, RangeSweep) and value.step is not None and value.step <= 0:
        raise ConfigError(f"{where} has step {value.step:g}: a range needs a step > 0.")
    try:
        create_optuna_distribution_from_override(override)
    except (ValueError, TypeError, AssertionError, NotImplementedError) as exc:
        reason = " ".join(str(exc).split()) or type(exc).__name__
        raise ConfigError(f"{where} cannot be sampled by Optuna: {reason}.") from None


def _check_choices_compose(override: Any, text: str, source: str, fixed: list[str], config_name: str) -> None:
    """Each string choice (a config group's option, typically) composes with the fixed overrides: a trial whose
    config cannot compose fails in the launcher, after Optuna has recorded it as running."""
    from hydra.core.override_parser.types import Transformer
    from hydra.errors import HydraException
    from omegaconf.errors import OmegaConfBaseException

    from vitlab.compose import compose_config

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
            raise ConfigError(f"{_where(text, source)} offers {choice}, which does not compose: {reason}") from None
