"""What a config key allows — a type and range, a list of them, or a set of names — and the one-paragraph refusal.

Every check of `vitlab.cli.validate` and its siblings words its refusal here, so each says the same three things:
the key, the value given, and what is allowed (with the closest valid name when a name was misspelt).
"""

from __future__ import annotations

import difflib
import math
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from omegaconf import OmegaConf

from vitlab.errors import ConfigError


@dataclass(frozen=True)
class Rule:
    """`kind`: int, float (ints accepted) or bool; `low`/`high` bounds (`open_low`/`open_high`: excluded)."""

    kind: type
    low: float | None = None
    high: float | None = None
    open_low: bool = False
    open_high: bool = False
    nullable: bool = False

    def allowed(self, plural: bool = False) -> str:
        names = {int: ("an integer", "integers"), float: ("a number", "numbers"), bool: ("true or false", "booleans")}
        name = names[self.kind][plural]
        if self.low is not None and self.high is not None:
            left, right = ("(" if self.open_low else "["), (")" if self.open_high else "]")
            name += f" in {left}{self.low:g}, {self.high:g}{right}"
        elif self.low is not None:
            name += f" {'>' if self.open_low else '>='} {self.low:g}"
        elif self.high is not None:
            name += f" {'<' if self.open_high else '<='} {self.high:g}"
        return name + (" (or null)" if self.nullable and not plural else "")

    def accepts(self, value: Any) -> bool:
        if value is None:
            return self.nullable
        if self.kind is bool:
            return isinstance(value, bool)
        if isinstance(value, bool) or not isinstance(value, int if self.kind is int else (int, float)):
            return False
        if isinstance(value, float) and not math.isfinite(value):
            return False
        if self.low is not None and (value <= self.low if self.open_low else value < self.low):
            return False
        return not (self.high is not None and (value >= self.high if self.open_high else value > self.high))


POSITIVE_INT, COUNT, FRACTION = Rule(int, 1), Rule(int, 0), Rule(float, 0, 1, open_high=True)


def shown(value: Any) -> str:
    """A value as the user wrote it in Python terms (an OmegaConf list or mapping as a plain one)."""
    if OmegaConf.is_config(value):
        value = OmegaConf.to_container(value, resolve=False)
    return repr(value)


def refuse(key: str, value: Any, allowed: str) -> ConfigError:
    """The refusal of `key=value`: `<key>=<value> is not allowed: it must be <allowed>.`"""
    return ConfigError(f"{key}={shown(value)} is not allowed: it must be {allowed}.")


def closest(value: Any, names: Iterable[str]) -> str | None:
    """The valid name nearest to a misspelt one, if any is near enough to be what was meant."""
    if not isinstance(value, str):
        return None
    names = list(names)
    lowered = {n.lower(): n for n in names}
    if value.lower() in lowered:
        return lowered[value.lower()]
    match = difflib.get_close_matches(value.lower(), list(lowered), n=1, cutoff=0.6)
    return lowered[match[0]] if match else None


def is_one_of(value: Any, allowed: Iterable[Any]) -> bool:
    """Whether `value` is one of `allowed`, of the same type too (1 is not `true`, "null" is not null)."""
    return any(type(value) is type(a) and value == a for a in allowed)


def refuse_name(key: str, value: Any, names: Iterable[Any], listed: str | None = None) -> ConfigError:
    """The refusal of a name that is not an option: the allowed names (or `listed`, when they are too many to
    list) and the closest one, when one is close."""
    names = list(names)
    allowed = listed or ", ".join(
        "null" if n is None else str(n).lower() if isinstance(n, bool) else str(n) for n in names
    )
    guess = closest(value, [n for n in names if isinstance(n, str)])
    hint = f" Did you mean {key}={guess}?" if guess is not None else ""
    return ConfigError(f"{key}={shown(value)} is not an option. Allowed: {allowed}.{hint}")


# vitlab's own optimiser keys (vitlab.training.layer_decay, vitlab.training.optim_impl); timm never sees them
OPTIM_RULES: dict[str, Rule] = {
    "optim.layer_decay": Rule(float, 0, 1, open_low=True, nullable=True),
    "optim.layer_decay_min_scale": Rule(float, 0, 1),
}
FUSED_CHOICES = ("auto", True, False)


def check_optim(cfg: Any) -> None:
    """Refuse a layer-wise decay outside (0, 1], a minimum scale outside [0, 1] or an `optim.fused` that is not
    auto, true or false, before anything is built (the optimiser itself is built only when fitting starts)."""
    for key, rule in OPTIM_RULES.items():
        value = OmegaConf.select(cfg, key, default=None if rule.nullable else 0.0)
        if not rule.accepts(value):
            raise refuse(key, value, rule.allowed())
    fused = OmegaConf.select(cfg, "optim.fused", default="auto")
    if not is_one_of(fused, FUSED_CHOICES):
        raise refuse_name("optim.fused", fused, FUSED_CHOICES)
