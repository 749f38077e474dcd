"""Pre-trained weights for a backbone: `none`, `hub:<timm name.tag>` or `file:<path>`.

A file may be safetensors, a plain torch state dict, a timm/DeiT-style checkpoint (`model`, `state_dict`)
or a vitlab/Lightning checkpoint (keys under `model.backbone.`). Files are read with `weights_only=True`.
Position embeddings and patch-embedding kernels are resampled by timm's own checkpoint filter when the
image or patch size differs; a classifier head of another class count is dropped.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import torch
from timm.models.vision_transformer import VisionTransformer, checkpoint_filter_fn
from torch import Tensor

from vitlab.errors import ConfigError, unreadable_file_reason

log = logging.getLogger(__name__)

WEIGHTS_KEY = "model.backbone.weights"
# Key prefixes stripped from a state dict, in order: Lightning module, our Classifier, DDP, torch.compile.
PREFIXES = ("model.backbone.", "backbone.", "module.", "_orig_mod.")
HEAD_KEYS = ("head.weight", "head.bias")
HEAD_SLOT = "head_slot."  # a head slot's tensors in a vitlab checkpoint (model.head.*)


@dataclass(frozen=True)
class WeightsSpec:
    """A parsed `model.backbone.weights` value."""

    source: Literal["none", "hub", "file"]
    ref: str = ""


def parse_weights(spec: str | None) -> WeightsSpec:
    """Parse `none` | `hub:<timm name.tag>` | `file:<path>`."""
    if spec is None or str(spec).strip().lower() in ("", "none", "null"):
        return WeightsSpec("none")
    source, sep, ref = str(spec).partition(":")
    if not sep or source not in ("hub", "file") or not ref:
        raise ConfigError(
            f"{WEIGHTS_KEY}={spec!r} is not understood. Allowed values: 'none', "
            "'hub:<timm model name.tag>' (e.g. hub:vit_base_patch16_224.orig_in21k, downloads) or "
            "'file:<path>' (safetensors or a torch checkpoint)."
        )
    return WeightsSpec(source, ref)  # type: ignore[arg-type]


def read_state_dict(path: str | Path) -> dict[str, Tensor]:
    """Read a state dict from safetensors or a torch checkpoint (`weights_only=True`), prefixes stripped."""
    path = Path(path).expanduser()
    if not path.is_file():
        raise ConfigError(f"{WEIGHTS_KEY}=file:{path}: no such file.")
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            obj: object = load_file(str(path))
        else:
            obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # any reader error means the file is not usable weights
        first_line = unreadable_file_reason(exc)
        raise ConfigError(
            f"{WEIGHTS_KEY}=file:{path} could not be read as weights ({first_line}). Give a safetensors "
            "file or a torch checkpoint saved with torch.save (state dict, or a dict holding one under "
            "'state_dict' or 'model')."
        ) from exc
    if isinstance(obj, dict):
        for key in ("state_dict", "model", "state_dict_ema"):
            if isinstance(obj.get(key), dict):
                obj = obj[key]
                break
    if not isinstance(obj, dict) or not all(isinstance(v, Tensor) for v in obj.values()):
        raise ConfigError(f"{WEIGHTS_KEY}=file:{path} holds no state dict of tensors.")
    return strip_prefixes(obj)


def strip_prefixes(state_dict: dict[str, Tensor]) -> dict[str, Tensor]:
    """Remove wrapper prefixes. Keys of a vitlab head slot (`model.head.`) are kept as `head_slot.<name>` (the
    composed model loads them into its head slot when it has the same one); other non-backbone keys go."""
    out: dict[str, Tensor] = {}
    for key, value in state_dict.items():
        if key.startswith("model.head."):
            out[HEAD_SLOT + key[len("model.head.") :]] = value
            continue
        if key.startswith("model.") and not key.startswith("model.backbone."):
            continue
        for prefix in PREFIXES:
            if key.startswith(prefix):
                key = key[len(prefix) :]
        out[key] = value
    return out


def load_file_weights(vit: VisionTransformer, path: str | Path, keep_head: bool = True) -> None:
    """Load `path` into `vit`: resample geometry, drop a mismatched head (any head if not `keep_head`),
    refuse anything else that differs."""
    state_dict = checkpoint_filter_fn(read_state_dict(path), vit)
    own = vit.state_dict()
    dropped = [
        k
        for k in HEAD_KEYS
        if k in state_dict and (not keep_head or k not in own or own[k].shape != state_dict[k].shape)
    ]
    for key in dropped:
        del state_dict[key]
    if dropped:
        log.info("weights %s: head dropped (other class count, or pretrained_head=false); the new head is fresh", path)
    missing = [k for k in own if k not in state_dict and k not in HEAD_KEYS]
    unexpected = [k for k in state_dict if k not in own]
    wrong_shape = [
        f"{k} {tuple(state_dict[k].shape)} vs {tuple(own[k].shape)}"
        for k in state_dict
        if k in own and state_dict[k].shape != own[k].shape
    ]
    if missing or unexpected or wrong_shape:
        problems = []
        for label, keys in (("missing", missing), ("unexpected", unexpected), ("wrong shape", wrong_shape)):
            if keys:
                problems.append(f"{label}: {', '.join(keys[:4])}{' ...' if len(keys) > 4 else ''}")
        raise ConfigError(
            f"{WEIGHTS_KEY}=file:{path} does not fit the backbone ({'; '.join(problems)}). Check that "
            "model/backbone (name, embed_dim, depth, num_heads, mlp_ratio, class token) matches the "
            "architecture the weights were trained with."
        )
    vit.load_state_dict(state_dict, strict=False)
    log.info("weights loaded from %s", path)
