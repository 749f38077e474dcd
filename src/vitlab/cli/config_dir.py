"""Locate the `configs/` tree that Hydra composes from."""

from __future__ import annotations

from pathlib import Path


def config_dir() -> str:
    """The repository's `configs/` (vitlab is installed editable from a checkout: `make install`)."""
    here = Path(__file__).resolve()
    for parent in here.parents:
        candidate = parent / "configs"
        if (candidate / "train.yaml").is_file():
            return str(candidate)
    raise SystemExit(
        "vitlab: no configs/ directory found above the installed package. Install vitlab from a checkout "
        "with `make install` (pip install -e .), or pass --config-dir."
    )
