"""The ODE pictures (docs/papers/ode.md#ode-pictures): numbers in, PNG out.

- `step_sizes_png`: the learned Euler step size of each block's attention and MLP step against the line of
  its initial value (1 = the stock block). One number per step (`scalar`) is a marker; per channel, the median
  with the 25–75 % and min–max bands of the D values.
- `memory_trajectory_png`: the memory-ODE head's state y(t) from 0 to T for a few images (its RMS over the H
  neurons per image, and a few neurons of the first image), beside the learned self-inhibition a against 1.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np

from vitlab.plots.figures import pyplot, save_png

COLOURS = {"attention": "tab:blue", "mlp": "tab:orange"}


def step_sizes_png(
    path: str | Path, branches: dict[str, Sequence[np.ndarray]], init: float = 1.0, title: str | None = None
) -> Path:
    """`branches` maps a branch name (attention, mlp) to one array of step sizes per block (1 or D values)."""
    plt = pyplot("the ODE step-size figure")
    fig, ax = plt.subplots(figsize=(7.0, 3.6))
    offsets = np.linspace(-0.12, 0.12, max(len(branches), 1))
    per_channel = False
    for offset, (branch, per_block) in zip(offsets, branches.items(), strict=False):
        x = np.arange(len(per_block)) + offset
        colour = COLOURS.get(branch)
        if all(np.size(v) == 1 for v in per_block):
            ax.plot(x, [float(np.ravel(v)[0]) for v in per_block], "o-", color=colour, label=f"{branch} h")
            continue
        per_channel = True
        q = np.array([np.quantile(np.ravel(v), [0.0, 0.25, 0.5, 0.75, 1.0]) for v in per_block])
        ax.fill_between(x, q[:, 0], q[:, 4], color=colour, alpha=0.15, linewidth=0)
        ax.fill_between(x, q[:, 1], q[:, 3], color=colour, alpha=0.35, linewidth=0)
        ax.plot(x, q[:, 2], "o-", color=colour, label=f"{branch} h (median; 25–75 %, min–max)")
    ax.axhline(init, color="black", linestyle="--", linewidth=1, label=f"initialisation h = {init:g}")
    ax.set_xlabel("block")
    ax.set_ylabel("step size h" + (" (per channel)" if per_channel else ""))
    ax.set_xticks(range(max((len(v) for v in branches.values()), default=0)))
    ax.ticklabel_format(axis="y", useOffset=False)
    ax.set_title(title or "Learned Euler step sizes per block")
    ax.legend(fontsize=8, loc="best")
    ax.grid(alpha=0.3)
    return save_png(fig, path)


def memory_trajectory_png(
    path: str | Path,
    times: np.ndarray,
    states: np.ndarray,
    inhibition: np.ndarray,
    labels: Sequence[int] | None = None,
    neurons: int = 6,
) -> Path:
    """`states` (P, B, H) at `times` (P,); `inhibition` a (H,); `labels` name the B images in the legend."""
    plt = pyplot("the memory-ODE trajectory figure")
    times, states = np.asarray(times, dtype=float), np.asarray(states, dtype=float)
    fig, (left, middle, right) = plt.subplots(1, 3, figsize=(12.0, 3.6))
    rms = np.sqrt((states**2).mean(axis=2))  # (P, B): one curve per image
    for b in range(states.shape[1]):
        left.plot(times, rms[:, b], label=f"image {b}" + (f" (class {labels[b]})" if labels is not None else ""))
    left.set(xlabel="ODE time t", ylabel="RMS of y(t) over the neurons", title="Memory state per image")
    left.legend(fontsize=7)
    # the neurons of image 0 that end furthest from 0: the ones whose dynamics are visible
    picked = np.argsort(-np.abs(states[-1, 0]))[:neurons]
    for i in picked:
        middle.plot(times, states[:, 0, i], label=f"y{i}")
    middle.set(xlabel="ODE time t", ylabel="y_i(t)", title="A few neurons of image 0")
    middle.legend(fontsize=7, ncol=2)
    a = np.ravel(np.asarray(inhibition, dtype=float))
    right.hist(a, bins=min(30, max(5, a.size // 4)), color="tab:green")
    right.axvline(1.0, color="black", linestyle="--", linewidth=1, label="initialisation a = 1")
    right.set(xlabel="self-inhibition a", ylabel="neurons", title="Learned self-inhibition")
    right.ticklabel_format(axis="x", useOffset=False)
    right.legend(fontsize=7)
    for ax in (left, middle, right):
        ax.grid(alpha=0.3)
    fig.tight_layout()
    return save_png(fig, path)
