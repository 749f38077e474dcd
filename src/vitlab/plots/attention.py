"""Attention heatmaps over images: one row per image, the image first, then one map per column.

Takes arrays, not models (`vitlab.analysis.attention_maps` computes the maps). Each map is a (rows, cols) grid of
patch tokens, stretched over the image (bilinear) and scaled to its own range, so a column shows where that
head or mixer looks, not how strongly compared with the others.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np

from vitlab.plots.figures import pyplot, save_png


def display_images(images: np.ndarray) -> np.ndarray:
    """(n, C, H, W) normalised images -> (n, H, W, 3) in [0, 1], each stretched to its own range (data sets
    normalise differently; for a picture the contrast is all that matters)."""
    x = images.astype(np.float32)
    x = x.transpose(0, 2, 3, 1)
    if x.shape[-1] == 1:
        x = np.repeat(x, 3, axis=-1)
    low = x.min(axis=(1, 2, 3), keepdims=True)
    high = x.max(axis=(1, 2, 3), keepdims=True)
    return (x - low) / np.maximum(high - low, 1e-12)


def heatmap_grid(
    images: np.ndarray,
    maps: np.ndarray,
    column_titles: Sequence[str],
    path: str | Path,
    title: str = "",
    row_titles: Sequence[str] | None = None,
    cell: float = 1.0,
) -> Path:
    """Write a grid: row r is images[r] (H, W, 3) in [0, 1], then maps[r, c] (rows, cols) over it in gray.

    maps: (n_images, n_columns, rows, cols); column_titles: one per map column."""
    if maps.ndim != 4 or maps.shape[0] != images.shape[0] or maps.shape[1] != len(column_titles):
        raise ValueError(f"maps {maps.shape} do not match {images.shape[0]} images and {len(column_titles)} titles")
    plt = pyplot("vitlab-eval analyse=attention")
    n_rows, n_cols = maps.shape[0], maps.shape[1] + 1
    fig, axes = plt.subplots(n_rows, n_cols, figsize=(cell * n_cols, cell * n_rows + (0.4 if title else 0)))
    axes = np.asarray(axes).reshape(n_rows, n_cols)
    height, width = images.shape[1:3]
    extent = (0, width, height, 0)
    for r in range(n_rows):
        gray = images[r].mean(axis=-1)
        axes[r, 0].imshow(images[r], extent=extent)
        for c in range(1, n_cols):
            grid = maps[r, c - 1].astype(np.float32)
            span = float(grid.max() - grid.min())
            scaled = (grid - grid.min()) / span if span > 0 else np.zeros_like(grid)
            axes[r, c].imshow(gray, cmap="gray", extent=extent)
            axes[r, c].imshow(
                scaled, cmap="inferno", alpha=0.65, extent=extent, interpolation="bilinear", vmin=0, vmax=1
            )
        if row_titles is not None:
            axes[r, 0].set_ylabel(row_titles[r], fontsize=7)
    for c, name in enumerate(["image", *column_titles]):
        axes[0, c].set_title(name, fontsize=7)
    for ax in axes.flat:
        ax.set_xticks([])
        ax.set_yticks([])
    if title:
        fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    return save_png(fig, path)
