"""`AtomicCheckpointIO`: every checkpoint Lightning writes (best, `epoch_NNN.ckpt`, last) is whole or absent.

Lightning's `TorchCheckpointIO` writes through an fsspec transaction that stages the file in the system's temp
folder and then *copies* it to the run directory when that is another file system: a full disk there leaves a
truncated `epoch_NNN.ckpt` under its final name, which a later resume or `vitlab-eval` would pick. This plugin
writes `<name>.tmp` beside the target, fsyncs it and renames it (`vitlab.runs.files.atomic_open`); a failed
write removes the `.tmp` and is raised as `vitlab.errors.WriteFailed` naming the checkpoint.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from lightning_fabric.utilities.types import _PATH
from pytorch_lightning.plugins import CheckpointIO, TorchCheckpointIO

from vitlab.errors import WriteFailed
from vitlab.runs.files import atomic_open


class AtomicCheckpointIO(TorchCheckpointIO):
    """`TorchCheckpointIO` whose saves are atomic (see the module docstring); loading is Lightning's."""

    def save_checkpoint(self, checkpoint: dict[str, Any], path: _PATH, storage_options: Any | None = None) -> None:
        if storage_options is not None:
            raise TypeError(f"{type(self).__name__} takes no storage_options (a local checkpoint folder only).")
        path = Path(path)
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise WriteFailed(path, exc) from exc
        with atomic_open(path, "wb") as handle:
            torch.save(checkpoint, handle)


def checkpoint_plugins(given: Any = None) -> list[Any]:
    """The trainer's `plugins`: those given (instantiated by Hydra already), plus `AtomicCheckpointIO` unless
    one of them is a `CheckpointIO` of its own."""
    plugins = [] if given is None else list(given) if isinstance(given, list | tuple) else [given]
    if not any(isinstance(plugin, CheckpointIO) for plugin in plugins):
        plugins.append(AtomicCheckpointIO())
    return plugins
