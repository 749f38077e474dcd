"""Interleaved rounds: the only honest way to compare timings on a machine whose speed drifts.

Each round runs every competitor once, in the same order, so a slow minute (another job on the cores, CPU
frequency) hits all of them alike. A competitor's figure is the median over rounds with its min–max; a
speed-up is the ratio *within* each round, summarised the same way, never a ratio of two separate runs.
"""

from __future__ import annotations

import statistics
from collections.abc import Callable, Mapping
from dataclasses import dataclass

MIN_ROUNDS = 7


@dataclass(frozen=True)
class Spread:
    """Median with min and max of a set of samples."""

    median: float
    low: float
    high: float

    @classmethod
    def of(cls, samples: list[float]) -> Spread:
        return cls(statistics.median(samples), min(samples), max(samples))

    def fmt(self, spec: str = ".1f", unit: str = "") -> str:
        return f"{self.median:{spec}}{unit} ({self.low:{spec}}–{self.high:{spec}})"

    def as_dict(self) -> dict[str, float]:
        return {"median": self.median, "min": self.low, "max": self.high}


def interleave(
    competitors: Mapping[str, Callable[[], float]], rounds: int, untimed_rounds: int = 1
) -> dict[str, list[float]]:
    """Call every competitor once per round (`untimed_rounds` rounds first, not kept); each call returns its own
    measurement (seconds, or any figure), so what is timed stays the competitor's business."""
    samples: dict[str, list[float]] = {name: [] for name in competitors}
    for r in range(untimed_rounds + rounds):
        for name, fn in competitors.items():
            value = fn()
            if r >= untimed_rounds:
                samples[name].append(value)
    return samples


def ratios(numerator: list[float], denominator: list[float]) -> Spread:
    """Per-round ratios numerator[r] / denominator[r] (e.g. reference time / our time = our speed-up)."""
    if len(numerator) != len(denominator) or not numerator:
        raise ValueError("ratios need the same, non-zero number of rounds on both sides")
    return Spread.of([a / b for a, b in zip(numerator, denominator, strict=True)])
