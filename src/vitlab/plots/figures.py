"""Where a run's figures go and how they are written: one matplotlib entry point, PNG files, W&B images."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from vitlab.extras import require

FIGURES_DIR = "figures"  # <run dir>/figures/<name>.png; vitlab-report shows every PNG found there


def pyplot(option: str | None = None) -> Any:
    """matplotlib.pyplot on the non-interactive Agg backend, or `MissingExtra` naming `pip install 'vitlab[plots]'`
    (`option` says what wanted the figure, e.g. "vitlab-report")."""
    matplotlib = require("plots", option)
    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    return plt


def figure_path(run_dir: str | Path, name: str) -> Path:
    """`<run_dir>/figures/<name>.png`, its folder created."""
    path = Path(run_dir) / FIGURES_DIR / f"{name}.png"
    path.parent.mkdir(parents=True, exist_ok=True)
    return path


def save_png(fig: Any, path: str | Path, dpi: int = 110) -> Path:
    """Write `fig` as a PNG (through a temporary name, so a reader never sees half a file) and close it."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp")
    fig.savefig(tmp, format="png", dpi=dpi, bbox_inches="tight")
    tmp.replace(path)
    import matplotlib.pyplot as plt

    plt.close(fig)
    return path


def log_images(loggers: Iterable[Any], images: Mapping[str, str | Path], step: int | None = None) -> None:
    """Send PNG files to every W&B logger among `loggers` as `wandb.Image`s under their keys (others ignore
    them: the CSV and TensorBoard loggers keep numbers only)."""
    from pytorch_lightning.loggers import WandbLogger

    for logger in loggers:
        if isinstance(logger, WandbLogger) and images:
            for key, path in images.items():
                logger.log_image(key=key, images=[str(path)], step=step)
