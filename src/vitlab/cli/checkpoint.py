"""Read vitlab checkpoints safely (`weights_only=True`) and recover the config they were trained with."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from vitlab.errors import ConfigError, unreadable_file_reason
from vitlab.runs.checkpoint_choice import Damage, alternatives_sentence, readable_checkpoints


def read_checkpoint(path: str | Path) -> dict[str, Any]:
    """Load a Lightning checkpoint with `weights_only=True`; a clear `ConfigError` if it cannot be read, naming
    the readable checkpoints beside it (a damaged last.ckpt usually has an epoch_NNN.ckpt next to it)."""
    path = Path(path).expanduser()
    if not path.is_file():
        raise ConfigError(f"ckpt_path={path}: no such file.")
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # truncated, corrupt, or not a torch file
        first_line = unreadable_file_reason(exc).split(". ", 1)[0].rstrip(".")  # torch's advice after it: noise
        raise ConfigError(
            f"ckpt_path={path} could not be read as a checkpoint ({first_line}). It is corrupt, truncated, or "
            "not a file written by vitlab-train (outputs/runs/<date>/<time>_train/checkpoints/*.ckpt)."
            + _beside(path, first_line)
        ) from exc
    if not isinstance(ckpt, dict) or "state_dict" not in ckpt:
        raise ConfigError(f"ckpt_path={path} is not a Lightning checkpoint (no 'state_dict').{_beside(path, '')}")
    return ckpt


def _beside(path: Path, reason: str) -> str:
    """The sentence naming the readable checkpoints in `path`'s folder ('' when there are none)."""
    return alternatives_sentence(Damage(path, reason, readable_checkpoints(path.parent, skip=path)))


def load_trained(cfg: Any) -> tuple[Any, Any]:
    """(module, data module) of a run config that `vitlab-eval` merged with the checkpoint's, the checkpoint's
    weights loaded, in eval mode: what the probes and analyses look at without a Lightning test loop. The model
    is built for the classes it was trained on, not those of `cfg.data`: few-shot transfer or attention maps on a
    data set with another number of classes need only the backbone."""
    from vitlab.training.components import build_datamodule, build_module

    checkpoint = read_checkpoint(cfg.ckpt_path)
    classes = int((checkpoint.get("hyper_parameters") or {})["num_classes"])
    datamodule = build_datamodule(cfg)
    module = build_module(cfg, classes)
    module.load_state_dict(checkpoint["state_dict"])
    return module.eval(), datamodule


def read_checkpoint_config(path: str | Path) -> dict[str, Any] | None:
    """The resolved run config stored by `ClassificationModule` (None for foreign checkpoints)."""
    hparams = read_checkpoint(path).get("hyper_parameters") or {}
    config = hparams.get("config")
    return config if isinstance(config, dict) else None
