"""Hydra callbacks that vitlab's configs register (`hydra.callbacks`)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from hydra.experimental.callback import Callback
from omegaconf import DictConfig

SQLITE = "sqlite:///"


class MakeStorageDir(Callback):
    """Create the folder of the Optuna sweeper's SQLite file before the study opens it (SQLite will not),
    so `hparams_search=optuna` works on a fresh checkout and a second run finds and continues the study."""

    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        storage = config.hydra.sweeper.get("storage")
        if isinstance(storage, str) and storage.startswith(SQLITE):
            Path(storage[len(SQLITE) :]).parent.mkdir(parents=True, exist_ok=True)
