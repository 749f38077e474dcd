"""The grammar of timm's augmentation strings (RandAugment, AugMix, AutoAugment), checked before a transform is built.

timm parses `rand-m9-mstd0.5-inc1` section by section, skips a section without a digit (`rand-m9-xx` trains
without the intended change, silently) and fails on others with a bare `AssertionError` or `ValueError`
at the first epoch. Here the whole string is read first, and a malformed one is refused naming the key, the
section and the form. Torch-free, so the command-line checks can use it before anything heavy is imported.
"""

from __future__ import annotations

import re
from typing import Any

from omegaconf import OmegaConf

from vitlab.errors import ConfigError

INT, FLOAT, BIT = r"\d+", r"(\d+(\.\d*)?|\.\d+)", r"[01]"
# section prefix -> (value pattern, what it means), per family; timm 1.0 `auto_augment.py`
RAND_SECTIONS = {
    "m": (INT, "m<int> magnitude (0-10)"),
    "n": (INT, "n<int> ops per image"),
    "p": (FLOAT, "p<prob> of each op"),
    "mstd": (FLOAT, "mstd<std> magnitude noise"),
    "mmax": (INT, "mmax<int> largest magnitude"),
    "inc": (BIT, "inc<0|1> increasing ops"),
    "t": ("(weights|3aw|3a)", "t<weights|3aw|3a> op set"),
}
AUGMIX_SECTIONS = {
    "m": (INT, "m<int> magnitude"),
    "w": (INT, "w<int> width"),
    "d": (INT, "d<int> depth"),
    "a": (FLOAT, "a<alpha>"),
    "b": (BIT, "b<0|1> blend"),
    "mstd": (FLOAT, "mstd<std>"),
}
AUTO_POLICIES = ("original", "originalr", "v0", "v0r", "3a")
AUTO_SECTIONS = {"mstd": (FLOAT, "mstd<std> magnitude noise")}
FORMS = (
    "rand-<sections> (RandAugment, e.g. rand-m9-mstd0.5-inc1), augmix-<sections> (AugMix, e.g. augmix-m3-w3) or "
    f"<policy>[-mstd<std>] (AutoAugment, policy one of {', '.join(AUTO_POLICIES)}; e.g. original-mstd0.5)"
)


def _section_problem(section: str, sections: dict[str, tuple[str, str]]) -> str | None:
    key = re.split(r"\d", section, maxsplit=1)[0] if not section.startswith("t") or "t" not in sections else "t"
    if key not in sections:
        return f"section {section!r} is not one of {'; '.join(d for _, d in sections.values())}"
    pattern, meaning = sections[key]
    if not re.fullmatch(pattern, section[len(key) :]):
        return f"section {section!r} does not have the form {meaning}"
    return None


def augment_string_problem(text: str) -> str | None:
    """Why `text` is not a timm augmentation string, or None when timm reads it as written."""
    family, *sections = text.split("-")
    if family == "rand":
        table = RAND_SECTIONS
    elif family == "augmix":
        table = AUGMIX_SECTIONS
    elif family in AUTO_POLICIES:
        table = AUTO_SECTIONS
    else:
        return f"it starts with {family!r}, which is neither rand, augmix nor an AutoAugment policy"
    for section in sections:
        problem = _section_problem(section, table)
        if problem is not None:
            return problem
    return None


def check_augment_string(key: str, value: Any) -> None:
    """Raise `ConfigError` naming `key` when `value` (null, or a timm augmentation string) is malformed."""
    if value is None:
        return
    problem = "it is not a string" if not isinstance(value, str) else augment_string_problem(value)
    if problem is not None:
        raise ConfigError(
            f"{key}={value!r} is not a timm augmentation string: {problem}. The form is {FORMS}; null turns it off."
        )


def check_color_jitter(key: str, value: Any) -> None:
    """Raise `ConfigError` unless `value` is null, a strength >= 0, or 3-4 strengths (brightness, contrast,
    saturation[, hue]) — what timm's `create_transform(color_jitter=...)` reads."""

    def number(v: Any) -> bool:
        return isinstance(v, (int, float)) and not isinstance(v, bool) and v >= 0

    items = list(value) if isinstance(value, (list, tuple)) or OmegaConf.is_list(value) else None
    if value is None or number(value) or (items is not None and len(items) in (3, 4) and all(map(number, items))):
        return
    shown = items if items is not None else value
    raise ConfigError(
        f"{key}={shown!r} is not allowed: it must be a strength >= 0 (e.g. 0.4), a list of 3 or 4 strengths "
        "(brightness, contrast, saturation, hue; e.g. [0.4,0.4,0.4]), or null (off)."
    )
