"""The two figures of a classification test: the confusion matrix and the reliability diagram.

Both take numbers (a confusion matrix, reliability bins from `vitlab.analysis.classification_metrics`), never a
model, and write `<run dir>/figures/<name>.png` through `vitlab.plots.figures`.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from vitlab.plots.figures import figure_path, pyplot, save_png

MAX_LABELLED_CLASSES = 30  # beyond this, class names on the axes overlap into a black band: no tick labels
OPTION = "the test figures (eval.figures=true)"


def row_normalised(confusion: Sequence[Sequence[int]]) -> np.ndarray:
    """Each row divided by its sum (the fraction of a true class predicted as each class); empty rows stay 0."""
    counts = np.asarray(confusion, dtype=np.float64)
    totals = counts.sum(axis=1, keepdims=True)
    return np.divide(counts, totals, out=np.zeros_like(counts), where=totals > 0)


def plot_confusion_matrix(
    run_dir: str | Path, confusion: Sequence[Sequence[int]], class_names: Sequence[str] | None = None
) -> Path:
    """`figures/confusion_matrix.png`: rows = true class, columns = predicted, each row normalised to sum 1;
    class names on the axes up to `MAX_LABELLED_CLASSES` classes."""
    plt = pyplot(OPTION)
    matrix = row_normalised(confusion)
    k = matrix.shape[0]
    side = min(10.0, 3.0 + 0.25 * min(k, MAX_LABELLED_CLASSES))
    fig, ax = plt.subplots(figsize=(side + 1.2, side))
    image = ax.imshow(matrix, cmap="Blues", vmin=0.0, vmax=1.0, interpolation="nearest")
    fig.colorbar(image, ax=ax, fraction=0.046, pad=0.04, label="fraction of the true class")
    if k <= MAX_LABELLED_CLASSES:
        names = list(class_names) if class_names is not None and len(class_names) == k else [str(i) for i in range(k)]
        ax.set_xticks(range(k), names, rotation=90 if k > 10 else 0, fontsize=8)
        ax.set_yticks(range(k), names, fontsize=8)
        if k <= 12:  # few cells: print each fraction in it
            for i in range(k):
                for j in range(k):
                    color = "white" if matrix[i, j] > 0.5 else "black"
                    ax.text(j, i, f"{matrix[i, j]:.2f}", ha="center", va="center", fontsize=7, color=color)
    else:
        ax.set_xticks([])
        ax.set_yticks([])
    ax.set_xlabel("predicted class")
    ax.set_ylabel("true class")
    ax.set_title(f"confusion matrix ({k} classes, rows normalised)")
    return save_png(fig, figure_path(run_dir, "confusion_matrix"))


def plot_reliability(run_dir: str | Path, bins: Sequence[Mapping[str, Any]], ece: float) -> Path:
    """`figures/reliability.png`: accuracy per confidence bin over the bin's confidence range, the gap from it to
    the bin's mean confidence (hatched, as Guo et al. 2017 draw it), the diagonal of perfect calibration, and the
    sample count per bin below; the ECE in the title."""
    plt = pyplot(OPTION)
    lower = np.array([b["lower"] for b in bins], dtype=np.float64)
    width = np.array([b["upper"] - b["lower"] for b in bins], dtype=np.float64)
    count = np.array([b["count"] for b in bins], dtype=np.int64)
    filled = count > 0
    accuracy = np.array([b["accuracy"] if b["count"] else 0.0 for b in bins], dtype=np.float64)
    confidence = np.array([b["confidence"] if b["count"] else np.nan for b in bins], dtype=np.float64)
    fig, (ax, counts_ax) = plt.subplots(
        2, 1, figsize=(5.0, 6.0), sharex=True, gridspec_kw={"height_ratios": [3, 1], "hspace": 0.08}
    )
    ax.bar(lower[filled], accuracy[filled], width=width[filled], align="edge", color="tab:blue", edgecolor="black",
           linewidth=0.5, label="accuracy in the bin")  # fmt: skip
    ax.plot([0, 1], [0, 1], linestyle="--", color="gray", label="perfect calibration")
    gap = confidence[filled] - accuracy[filled]  # Guo et al.'s "gap": from the bin's accuracy to its mean confidence
    ax.bar(lower[filled], gap, bottom=accuracy[filled], width=width[filled], align="edge", color="tab:red", alpha=0.3,
           edgecolor="tab:red", hatch="//", linewidth=0.5, label="gap to the mean confidence")  # fmt: skip
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1)
    ax.set_ylabel("accuracy")
    ax.set_title(f"reliability diagram, ECE = {ece:.4f} ({len(bins)} bins)")
    ax.legend(loc="upper left", fontsize=8)
    counts_ax.bar(lower, count, width=width, align="edge", color="gray", edgecolor="black", linewidth=0.5)
    counts_ax.set_xlabel("confidence (max softmax probability)")
    counts_ax.set_ylabel("samples")
    return save_png(fig, figure_path(run_dir, "reliability"))
