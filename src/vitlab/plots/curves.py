"""Training curves (loss, accuracy, learning rate against the optimiser step) of one run or two side by side.

Numbers in, PNG bytes out: `vitlab-report` inlines the image in its page, so nothing is written to the run.
Each panel holds every series of its kind; a second run's series are dashed in the same colour.
"""

from __future__ import annotations

import io
from collections.abc import Mapping, Sequence
from typing import Any

from vitlab.plots.figures import pyplot

Series = Mapping[str, tuple[Sequence[float], Sequence[float]]]  # label -> (steps, values)
LINESTYLES = ("-", "--", ":", "-.")
LOG_SCALE_PANELS = ("learning rate",)


def curves_png(runs: Sequence[tuple[str, Mapping[str, Series]]], option: str = "vitlab-report") -> bytes | None:
    """A row of panels (one per panel name found in any run, in first-seen order), each with every run's series
    for it; None when there is nothing to draw. `runs` is [(run label, {panel: {series label: (x, y)}})]."""
    panels: list[str] = []
    for _, by_panel in runs:
        panels += [p for p, series in by_panel.items() if series and p not in panels]
    if not panels:
        return None
    plt = pyplot(option)
    fig, axes = plt.subplots(1, len(panels), figsize=(4.2 * len(panels), 3.4), squeeze=False)
    for ax, panel in zip(axes[0], panels, strict=True):
        colours: dict[str, Any] = {}
        for r, (run_label, by_panel) in enumerate(runs):
            for label, (x, y) in (by_panel.get(panel) or {}).items():
                colour = colours.setdefault(label, f"C{len(colours) % 10}")
                name = f"{label} ({run_label})" if len(runs) > 1 else label
                marker = "o" if len(x) < 30 else None
                ax.plot(x, y, LINESTYLES[r % len(LINESTYLES)], color=colour, marker=marker, markersize=3, label=name)
        if panel in LOG_SCALE_PANELS:
            ax.set_yscale("log")
        ax.set(title=panel, xlabel="optimiser step")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    fig.tight_layout()
    return png_bytes(fig)


def png_bytes(fig: Any, dpi: int = 110) -> bytes:
    """`fig` as PNG bytes (then closed): for pages that inline their images."""
    import matplotlib.pyplot as plt

    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=dpi, bbox_inches="tight")
    plt.close(fig)
    return buffer.getvalue()
