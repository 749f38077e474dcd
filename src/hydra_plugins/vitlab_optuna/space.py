"""The search space: Hydra's sweep grammar (the `params` of the sweeper and the command line's sweep overrides)
turned into Optuna distributions, with the same forms hydra-optuna-sweeper accepted (docs/reproduce.md):

  interval(a, b)             FloatDistribution(a, b) (Hydra reads an interval's bounds as floats)
  tag(log, interval(a, b))   the same on a log scale (0 < a <= b)
  range(a, b[, step=s])      IntDistribution of Hydra's values (b excluded); with a float: FloatDistribution, step s
  choice(x, y, ...)          CategoricalDistribution; also a shuffled range
  a plain value              fixed: given to every trial as it is

A form that cannot be sampled raises `ConfigError` naming the parameter, its source and the bounds.
"""

from __future__ import annotations

from typing import Any

from vitlab.errors import ConfigError


def parse_space(specs: list[tuple[str, str]]) -> tuple[dict[str, Any], dict[str, str]]:
    """`specs`: (`key=value` text, where it comes from), a later key winning. Returns (distributions, fixed)."""
    from hydra.core.override_parser.overrides_parser import OverridesParser
    from hydra.errors import HydraException

    parser = OverridesParser.create()
    distributions: dict[str, Any] = {}
    fixed: dict[str, str] = {}
    for text, source in specs:
        try:
            override = parser.parse_override(text)
        except HydraException as exc:
            reason = " ".join(str(exc).split())
            raise ConfigError(f"{where(text, source)} is not a Hydra override: {reason}") from None
        key = override.get_key_element()
        distributions.pop(key, None)
        fixed.pop(key, None)
        if override.is_sweep_override():
            distributions[key] = distribution(override, text, source)
        else:
            fixed[key] = override.get_value_element_as_str()
    return distributions, fixed


def where(text: str, source: str) -> str:
    return f"The Optuna search space's {text.split('=', 1)[0]} ({source}: {text})"


def distribution(override: Any, text: str, source: str) -> Any:
    """The Optuna distribution of one sweep override; `ConfigError` when it cannot be sampled."""
    from hydra.core.override_parser.types import Transformer
    from optuna.distributions import CategoricalDistribution, FloatDistribution, IntDistribution

    value = override.value()
    at = where(text, source)
    if override.is_choice_sweep() or (override.is_range_sweep() and value.shuffle):
        try:
            choices = list(override.sweep_iterator(transformer=Transformer.encode))
        except ValueError as exc:  # e.g. a shuffled range with step 0
            raise ConfigError(f"{at} cannot be listed: {' '.join(str(exc).split())}.") from None
        bad = [c for c in choices if not isinstance(c, (str, int, float, bool, type(None)))]
        if bad or not choices:
            raise ConfigError(f"{at} needs one or more plain values (numbers, strings, booleans, null) to choose from.")
        return CategoricalDistribution(choices)
    if override.is_range_sweep():
        start, stop, step = value.start, value.stop, value.step
        if step is None or step <= 0:
            raise ConfigError(f"{at} has step {step}: a range needs a step > 0.")
        if stop <= start:
            raise ConfigError(f"{at} is empty: range(start, stop) runs from start up to, not including, stop > start.")
        if any(isinstance(v, float) for v in (start, stop, step)):
            n = int((stop - start) / step - 1e-9)  # the last value below stop
            return FloatDistribution(start, start + n * step, step=step)
        return IntDistribution(int(start), int(stop) - 1 - (int(stop) - 1 - int(start)) % int(step), step=int(step))
    low, high, log = value.start, value.end, "log" in value.tags
    if low > high:
        raise ConfigError(
            f"{at} has low {low:g} > high {high:g}: an interval is written low first, e.g. interval({high:g}, {low:g})."
        )
    if low == high:
        raise ConfigError(
            f"{at} is empty (low = high = {low:g}): give the value itself for a fixed parameter, or a wider interval."
        )
    if log and low <= 0:
        raise ConfigError(
            f"{at} is on a log scale but its low bound is {low:g}: a log interval needs 0 < low <= high "
            f"(e.g. tag(log, interval({high / 100:g}, {high:g}))); drop tag(log, ...) for a linear interval."
        )
    return FloatDistribution(float(low), float(high), log=log)


def grid(distributions: dict[str, Any]) -> dict[str, list[Any]]:
    """The grid sampler's values of each parameter: a choice or a range; an interval has no grid."""
    from optuna.distributions import CategoricalDistribution

    out: dict[str, list[Any]] = {}
    for key, dist in distributions.items():
        if isinstance(dist, CategoricalDistribution):
            out[key] = list(dist.choices)
        elif getattr(dist, "step", None) is not None and not dist.log:
            n = round((dist.high - dist.low) / dist.step)
            out[key] = [dist.low + i * dist.step for i in range(n + 1)]
        else:
            raise ConfigError(
                f"hydra.sweeper.sampler.name=grid needs a finite set of values for every parameter, but {key} is an "
                "interval: write it as choice(...) or range(...), or choose another sampler (tpe, gp, cmaes, random)."
            )
    return out
