"""Shapes of the list-valued keys (mean/std, crop scale, stem widths, tags, …), checked before anything is built.

A scalar where a list belongs (`data.mean=0.5`, `tags=dev`, `data.augment.scale=0.5`) otherwise reaches timm,
torchvision or W&B and ends in "'float' object is not iterable" far from the key — or, for a string, is
silently taken letter by letter. Every list-valued key the shipped configs hold has a rule here;
tests/test_bad_inputs.py fails when a config gains a list-valued key without one.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass
from typing import Any

from omegaconf import DictConfig, OmegaConf

from vitlab.cli.rules import POSITIVE_INT, Rule, refuse

_ABSENT = object()


@dataclass(frozen=True)
class ListRule:
    """A list whose items are numbers (`item`, a `Rule`) or strings (`item=str`), of `length` items exactly
    (or at least `min_length`), non-decreasing when `ordered` (a [low, high] range)."""

    item: Rule | type
    example: str
    length: int | None = None
    min_length: int = 0
    ordered: bool = False
    distinct: bool = False
    nullable: bool = False

    def allowed(self) -> str:
        count = f"{self.length} " if self.length else f"at least {self.min_length} " if self.min_length else ""
        items = "strings" if self.item is str else self.item.allowed(plural=True)  # type: ignore[union-attr]
        text = f"a list of {count}{items}"
        text += ", low <= high" if self.ordered else ""
        text += ", each once" if self.distinct else ""
        return f"{text}, e.g. {self.example}" + (", or null" if self.nullable else "")

    def accepts(self, value: Any) -> bool:
        if value is None:
            return self.nullable
        if not (OmegaConf.is_list(value) or isinstance(value, (list, tuple))):
            return False
        items = list(value)
        if self.length is not None and len(items) != self.length:
            return False
        if len(items) < self.min_length:
            return False
        accepts = (lambda v: isinstance(v, str)) if self.item is str else self.item.accepts  # type: ignore[union-attr]
        if not all(accepts(v) for v in items):
            return False
        if self.ordered and any(a > b for a, b in itertools.pairwise(items)):
            return False
        return not (self.distinct and len(set(items)) != len(items))


NUMBER = Rule(float)
LIST_RULES: dict[str, ListRule] = {
    "tags": ListRule(str, "[dev] or [vix,cifar10]"),
    "data.mean": ListRule(NUMBER, "[0.485,0.456,0.406]", length=3),
    "data.std": ListRule(Rule(float, 0, open_low=True), "[0.229,0.224,0.225]", length=3),
    "data.augment.scale": ListRule(Rule(float, 0, open_low=True), "[0.08,1.0]", length=2, ordered=True),
    "data.augment.zoom": ListRule(Rule(float, 0, open_low=True), "[0.9,1.1]", length=2, ordered=True),
    "data.classes": ListRule(Rule(int, 0, 9), "[0,1,2,3,4]", min_length=1, distinct=True, nullable=True),
    "model.stem.widths": ListRule(POSITIVE_INT, "[32,64]", min_length=1),
    # one per convolution, multiplying to the patch size: checked by the stem, which knows both
    "model.stem.strides": ListRule(POSITIVE_INT, "[2,2,1]", min_length=1, nullable=True),
    "model.replace_pretrained": ListRule(str, "[patch_embed] or []"),
    "module.mixup.cutmix_minmax": ListRule(
        Rule(float, 0, 1, open_low=True), "[0.2,0.8]", 2, ordered=True, nullable=True
    ),
    "scheduler.decay_milestones": ListRule(Rule(int, 0), "[30,60,90]", min_length=1, ordered=True),
    "probe.shots": ListRule(POSITIVE_INT, "[1,5,10]", min_length=1, distinct=True),  # vitlab-eval probe=fewshot
}
# Lists that are also allowed in another form, checked by their own rules: trainer.devices (a count, -1, auto
# or a list of indices), data.augment.color_jitter (a number or 3-4 numbers), scheduler.noise.
OTHER_FORMS = ("trainer.devices", "data.augment.color_jitter", "scheduler.noise")


def check_lists(cfg: DictConfig) -> None:
    """Raise `ConfigError` (key, value, the list that is allowed) for the first list-valued key given another
    shape; a key the composed config does not have (another data set, slot or schedule) is not checked."""
    for key, rule in LIST_RULES.items():
        value = OmegaConf.select(cfg, key, default=_ABSENT)
        if value is not _ABSENT and not rule.accepts(value):
            raise refuse(key, value, rule.allowed())
