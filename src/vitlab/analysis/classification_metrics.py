"""The numbers a classification paper reports, from a test set's logits and labels (pure: tensors in, numbers out).

Every quantity is computed in float64 from the whole test set at once (not averaged over batches), so it equals
scikit-learn's function of the same name (tests/test_eval_metrics.py compares each one):

- top-1 / top-5 accuracy: the fraction of samples whose label is the arg-max / among the 5 largest logits (top-5
  only where there are more than 5 classes: with 5 or fewer it is 1 by construction);
- per-class accuracy: the recall of each class (correct / samples of that class; NaN for a class without test
  samples), and its mean over the classes that have samples, the balanced accuracy;
- confusion matrix: counts, rows = true class, columns = predicted class (up to 1000 classes);
- NLL: the mean cross-entropy -log softmax(z)_y of the logits;
- ECE (Guo et al., "On Calibration of Modern Neural Networks", 2017): the confidence max_k softmax(z)_k of each sample
  falls in one of M equal-width bins ((m-1)/M, m/M]; ECE = sum_m n_m/n * |acc_m - conf_m|, with acc_m and conf_m
  the accuracy and mean confidence of the n_m samples of bin m. `reliability` keeps those per-bin numbers for the
  reliability diagram.
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import Tensor

ECE_BINS = 15  # Guo et al. 2017's choice, and what most calibration tables report
TOP_K = 5
MAX_CONFUSION_CLASSES = 1000  # above it the confusion matrix is not kept (None): K^2 counts outgrow a JSON file


def _checked(logits: Tensor, labels: Tensor) -> tuple[Tensor, Tensor]:
    if logits.ndim != 2 or labels.ndim != 1 or logits.shape[0] != labels.shape[0] or logits.shape[0] == 0:
        raise ValueError(f"need logits (N, K) and labels (N,) with N > 0; got {tuple(logits.shape)} and "
                         f"{tuple(labels.shape)}")  # fmt: skip
    return logits.detach().to(torch.float64).cpu(), labels.detach().to(torch.int64).cpu()


def top_k_accuracy(logits: Tensor, labels: Tensor, k: int) -> float:
    """Fraction of samples whose label is among the `k` largest logits."""
    logits, labels = _checked(logits, labels)
    top = logits.topk(min(k, logits.shape[1]), dim=1).indices
    return float((top == labels[:, None]).any(dim=1).double().mean())


def confusion_matrix(predicted: Tensor, labels: Tensor, num_classes: int) -> Tensor:
    """(K, K) int64 counts: entry [i, j] is the number of samples of class i predicted as class j."""
    index = labels.to(torch.int64) * num_classes + predicted.to(torch.int64)
    return torch.bincount(index, minlength=num_classes * num_classes).reshape(num_classes, num_classes)


def per_class_accuracy(predicted: Tensor, labels: Tensor, num_classes: int) -> Tensor:
    """Recall of each class (float64), NaN for a class without samples."""
    support = torch.bincount(labels, minlength=num_classes).to(torch.float64)
    correct = torch.bincount(labels[predicted == labels], minlength=num_classes).to(torch.float64)
    return torch.where(support > 0, correct / support.clamp(min=1), torch.full_like(support, math.nan))


def nll(logits: Tensor, labels: Tensor) -> float:
    """Mean negative log-likelihood (cross-entropy) of the labels under softmax(logits)."""
    logits, labels = _checked(logits, labels)
    return float(-logits.log_softmax(dim=1).gather(1, labels[:, None]).mean())


def reliability(logits: Tensor, labels: Tensor, bins: int = ECE_BINS) -> list[dict[str, Any]]:
    """Per confidence bin ((m-1)/M, m/M]: its edges, sample count, accuracy and mean confidence (None when
    empty): the data of a reliability diagram and of the ECE."""
    logits, labels = _checked(logits, labels)
    probs = logits.softmax(dim=1)
    confidence, predicted = probs.max(dim=1)
    correct = (predicted == labels).to(torch.float64)
    edges = torch.linspace(0.0, 1.0, bins + 1, dtype=torch.float64)
    # right-closed bins: index m holds edges[m] < c <= edges[m+1] (a confidence is > 0, so none falls below bin 0)
    index = torch.bucketize(confidence, edges[1:-1], right=False)
    count = torch.bincount(index, minlength=bins)
    acc_sum = torch.bincount(index, weights=correct, minlength=bins)
    conf_sum = torch.bincount(index, weights=confidence, minlength=bins)
    rows = []
    for m in range(bins):
        n = int(count[m])
        rows.append(
            {
                "lower": float(edges[m]),
                "upper": float(edges[m + 1]),
                "count": n,
                "accuracy": float(acc_sum[m] / n) if n else None,
                "confidence": float(conf_sum[m] / n) if n else None,
            }
        )
    return rows


def expected_calibration_error(rows: list[dict[str, Any]]) -> float:
    """ECE = sum over bins of n_m/n * |acc_m - conf_m| (`rows` from `reliability`)."""
    total = sum(r["count"] for r in rows)
    return sum(r["count"] / total * abs(r["accuracy"] - r["confidence"]) for r in rows if r["count"])


def classification_report(logits: Tensor, labels: Tensor, bins: int = ECE_BINS) -> dict[str, Any]:
    """Everything above for one test set: the scalars (`acc`, `acc_top5` where K > 5, `acc_per_class_mean`, `nll`,
    `ece`) and the arrays (`per_class_accuracy`, `confusion_matrix`, `reliability`), as plain Python numbers."""
    logits, labels = _checked(logits, labels)
    num_classes = logits.shape[1]
    if int(labels.min()) < 0 or int(labels.max()) >= num_classes:
        raise ValueError(f"labels must lie in [0, {num_classes}); got [{int(labels.min())}, {int(labels.max())}]")
    predicted = logits.argmax(dim=1)
    recall = per_class_accuracy(predicted, labels, num_classes)
    # K x K counts: 1000 classes make a 1e6-entry table (a few MB of JSON); 21k classes would take gigabytes
    confusion = confusion_matrix(predicted, labels, num_classes) if num_classes <= MAX_CONFUSION_CLASSES else None
    rows = reliability(logits, labels, bins)
    scalars: dict[str, float] = {"acc": float((predicted == labels).double().mean())}
    if num_classes > TOP_K:
        scalars["acc_top5"] = top_k_accuracy(logits, labels, TOP_K)
    scalars["acc_per_class_mean"] = float(recall[~recall.isnan()].mean())
    scalars["nll"] = nll(logits, labels)
    scalars["ece"] = expected_calibration_error(rows)
    return {
        "samples": int(labels.numel()),
        "num_classes": num_classes,
        "scalars": scalars,
        "per_class_accuracy": [None if math.isnan(v) else v for v in recall.tolist()],
        "class_support": torch.bincount(labels, minlength=num_classes).tolist(),
        "confusion_matrix": confusion.tolist() if confusion is not None else None,
        "ece_bins": bins,
        "reliability": rows,
    }
