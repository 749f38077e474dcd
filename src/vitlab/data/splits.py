"""Deterministic, stratified train/val/test index splits."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from sklearn.model_selection import train_test_split
from torch.utils.data import Dataset, Subset


def stratified_split(labels: Sequence[int] | np.ndarray, fractions: Sequence[float], seed: int = 0) -> list[np.ndarray]:
    """Split indices 0..N-1 into len(fractions)+1 parts: the given fractions of N, then the rest first.

    `stratified_split(y, [0.1, 0.2])` returns (train, val, test) with 70/10/20 % of every class (up to
    rounding); the same `seed` always gives the same split.
    """
    labels = np.asarray(labels)
    rest = np.arange(len(labels))
    parts: list[np.ndarray] = []
    remaining = 1.0
    for frac in fractions:
        if frac <= 0:
            parts.append(np.array([], dtype=np.int64))
            continue
        rest, part = train_test_split(
            rest, test_size=frac / remaining, stratify=labels[rest], random_state=seed, shuffle=True
        )
        remaining -= frac
        parts.append(np.sort(part))
    return [np.sort(rest), *parts]


def hold_out_val(
    train: Dataset, train_eval: Dataset, labels: Sequence[int] | np.ndarray, fraction: float, seed: int
) -> tuple[Subset, Subset]:
    """Carve a stratified validation split out of a training set.

    `train` and `train_eval` are the same images with training and evaluation transforms; the held-out
    part is read through `train_eval`, so validation images are never augmented.
    """
    train_idx, val_idx = stratified_split(labels, [fraction], seed=seed)
    return Subset(train, train_idx.tolist()), Subset(train_eval, val_idx.tolist())
