"""Silence third-party output a vitlab user cannot act on; keep every warning of vitlab's own.

What goes: Lightning's advertising tips and hardware inventory lines, its notes about how it restores a
checkpoint that vitlab already announces, its hint to use `srun` (vitlab's SLURM path is the submitit
launcher), and deprecation warnings raised inside libraries. What stays: everything vitlab logs or warns, and
Lightning's warnings about the run itself (e.g. a logging interval longer than an epoch).
"""

from __future__ import annotations

import logging
import warnings

# start of Lightning INFO messages that say nothing about this run
_LIGHTNING_CHATTER = (
    "💡 Tip",
    "GPU available:",
    "TPU available:",
    "HPU available:",
    "Seed set to",
    "`weights_only` was not set",
    "Restoring states from the checkpoint path",
    "Loaded model weights from the checkpoint",
)
_LIGHTNING_LOGGERS = (
    "pytorch_lightning.utilities.rank_zero",
    "lightning_fabric.utilities.seed",
    "pytorch_lightning.trainer.connectors.checkpoint_connector",
    "lightning.pytorch.utilities.rank_zero",
    "lightning.fabric.utilities.seed",
)


class _DropChatter(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.getMessage()).lstrip().startswith(_LIGHTNING_CHATTER)


_FILTER = _DropChatter()


def quiet_third_party() -> None:
    """Install the filters (idempotent). Call when a run starts: Hydra configures logging before that."""
    for name in _LIGHTNING_LOGGERS:
        logger = logging.getLogger(name)
        if _FILTER not in logger.filters:
            logger.addFilter(_FILTER)
    for category in (DeprecationWarning, FutureWarning, PendingDeprecationWarning):
        warnings.filterwarnings("ignore", category=category)
        warnings.filterwarnings("default", category=category, module=r"vitlab(\.|$)")  # ours stay
    warnings.filterwarnings("ignore", message=r".*The `srun` command is available on your system")
