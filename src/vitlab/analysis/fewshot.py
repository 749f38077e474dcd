"""n-shot linear evaluation: a linear probe fit on n training images per class, scored on the test split.

For each number of shots n and each draw d, exactly n images of every class are drawn from the training split
(without replacement within a class) with a generator seeded from (seed, n, d) alone, so a draw is the same
whatever other shots or draws are asked for, and the same on every machine. A linear probe
(`vitlab.analysis.linear_probe`, scikit-learn's objective) is fit on their frozen features, `standardise`d with
the draw's own mean and scale, and scored on the whole test split; the result per n is the mean and the sample
standard deviation (ddof 1; 0 for one draw) of the test accuracy over the draws.
"""

from __future__ import annotations

import statistics
from collections.abc import Mapping, Sequence

import torch
from torch import Tensor

from vitlab.analysis.linear_probe import fit_linear_probe, standardise
from vitlab.data.sampling import mix_seed


def class_counts(labels: Tensor, num_classes: int) -> Tensor:
    """Images per class (num_classes,)."""
    return torch.bincount(labels.long().cpu(), minlength=num_classes)


def draw_shots(labels: Tensor, shots: int, num_classes: int, seed: int, draw: int) -> Tensor:
    """Sorted indices into `labels`: `shots` distinct images of every class, draw `draw` of `seed`."""
    labels = labels.long().cpu()
    counts = class_counts(labels, num_classes)
    if shots < 1 or int(counts.min()) < shots:
        raise ValueError(
            f"{shots} shots need that many images of every class; the smallest class has {int(counts.min())}"
        )
    generator = torch.Generator().manual_seed(mix_seed(seed, shots, draw))
    picked = []
    for cls in range(num_classes):
        members = (labels == cls).nonzero().flatten()
        picked.append(members[torch.randperm(len(members), generator=generator)[:shots]])
    return torch.cat(picked).sort().values


def fewshot_draws(
    labels: Tensor, shots: Sequence[int], draws: int, num_classes: int, seed: int = 0
) -> dict[int, list[Tensor]]:
    """{n: [indices of draw 0, draw 1, ...]} for every n in `shots` (see `draw_shots`)."""
    return {n: [draw_shots(labels, n, num_classes, seed, d) for d in range(draws)] for n in shots}


def fewshot_accuracies(
    draws: Mapping[int, Sequence[Tensor]],
    pool_index: Tensor,
    pool_features: Tensor,
    pool_labels: Tensor,
    test_features: Tensor,
    test_labels: Tensor,
    num_classes: int,
    c: float = 1.0,
) -> dict[int, list[float]]:
    """{n: test accuracy of each draw}. The draws index the training split; `pool_index` (sorted) says which
    of its images `pool_features`/`pool_labels` hold (at least every drawn one), so only those are computed."""
    pool_index = pool_index.long().to(pool_features.device)
    results: dict[int, list[float]] = {}
    for n, drawn in draws.items():
        results[n] = []
        for indices in drawn:
            rows = torch.searchsorted(pool_index, indices.to(pool_index.device))
            if not torch.equal(pool_index[rows.clamp(max=len(pool_index) - 1)], indices.to(pool_index.device)):
                raise ValueError("a drawn image has no feature in the pool")
            train, test = standardise(pool_features[rows], test_features)  # the draw's own mean and scale
            probe = fit_linear_probe(train, pool_labels[rows], num_classes, c=c)
            results[n].append(probe.accuracy(test, test_labels))
    return results


def summarise(accuracies: Mapping[int, Sequence[float]]) -> dict[str, float]:
    """`fewshot/<n>shot_acc_mean` and `fewshot/<n>shot_acc_std` (sample std over the draws, 0 for one)."""
    out: dict[str, float] = {}
    for n, values in accuracies.items():
        out[f"fewshot/{n}shot_acc_mean"] = statistics.mean(values)
        out[f"fewshot/{n}shot_acc_std"] = statistics.stdev(values) if len(values) > 1 else 0.0
    return out
