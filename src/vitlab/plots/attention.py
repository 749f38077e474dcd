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


def _stretched(grid: np.ndarray, height: int, width: int) -> np.ndarray:
    """A (rows, cols) map resized bilinearly (pixel centres, as `align_corners=False`) to (height, width) and
    scaled to [0, 1] by its own range."""
    grid = grid.astype(np.float64)

    def axis_positions(n_out: int, n_in: int) -> np.ndarray:
        return np.clip((np.arange(n_out) + 0.5) * n_in / n_out - 0.5, 0, n_in - 1)

    rows = np.stack([np.interp(axis_positions(height, grid.shape[0]), np.arange(grid.shape[0]), col) for col in grid.T])
    out = np.stack([np.interp(axis_positions(width, grid.shape[1]), np.arange(grid.shape[1]), row) for row in rows.T])
    span = out.max() - out.min()
    return (out - out.min()) / span if span > 0 else np.zeros_like(out)


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
    colours = plt.get_cmap("inferno")
    n_rows, n_cols = maps.shape[0], maps.shape[1] + 1
    fig, axes = plt.subplots(n_rows, n_cols, figsize=(cell * n_cols, cell * n_rows + (0.4 if title else 0)))
    axes = np.asarray(axes).reshape(n_rows, n_cols)
    height, width = images.shape[1:3]
    for r in range(n_rows):
        gray = images[r].mean(axis=-1, keepdims=True)
        axes[r, 0].imshow(images[r], interpolation="nearest")
        for c in range(1, n_cols):
            heat = colours(_stretched(maps[r, c - 1], height, width))[..., :3]
            # blended here at the image's own resolution: flat pixels keep the PNG small
            axes[r, c].imshow(0.35 * gray + 0.65 * heat, interpolation="nearest")
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
