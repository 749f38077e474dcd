"""Pre-trained weights loaded into the *composed* model, with a report of what came from where.

`build_classifier` builds the stock timm backbone, installs every slot (their own initialisation, EIT's
official init included, runs then) and only then loads the weights, by tensor name, into the finished model:

- **loaded**: a tensor of the file whose name and shape the model has (after timm's resampling of the
  position embedding and the patch kernel to the model's geometry);
- **new**: a tensor of the model that the file does not provide (added by a slot, a fresh head);
- **dropped**: a tensor of the file the model does not use: a classifier head of another class count (or
  `pretrained_head=false`), or a tensor a slot replaced where `model.replace_pretrained` allows it.

A slot that removes or reshapes a tensor the weights provide (a stem in place of the loaded patch embedding,
a mixer whose layout does not take the loaded q/k/v) is refused with one paragraph: nothing loaded is
silently replaced. A file that does not fit the backbone itself (missing, unexpected or other-shaped
tensors of the stock architecture) is refused as before.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from timm.layers import resample_abs_pos_embed
from timm.models.vision_transformer import VisionTransformer, checkpoint_filter_fn
from torch import Tensor

from vitlab.errors import ConfigError
from vitlab.models.weights import HEAD_KEYS, HEAD_SLOT, WEIGHTS_KEY, WeightsSpec, read_state_dict
from vitlab.runs.files import write_json

log = logging.getLogger(__name__)


def shapes(module: torch.nn.Module) -> dict[str, torch.Size]:
    """Name -> shape of everything in the module's state dict (parameters and persistent buffers)."""
    return {k: v.shape for k, v in module.state_dict().items()}


def _matches(key: str, prefixes: Sequence[str]) -> bool:
    return any(key == p or key.startswith(p + ".") for p in prefixes)


@dataclass
class WeightsReport:
    """What a weights file gave the model (see the module docstring); `dropped` maps a key to why."""

    source: str
    loaded: list[str] = field(default_factory=list)
    new: list[str] = field(default_factory=list)
    dropped: dict[str, str] = field(default_factory=dict)

    def counts(self) -> dict[str, Any]:
        return {
            "weights/source": self.source,
            "weights/loaded": len(self.loaded),
            "weights/new": len(self.new),
            "weights/dropped": len(self.dropped),
        }

    def write(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        write_json(path, self.__dict__)

    def table(self) -> str:
        """A few lines for the log: counts and the first names of each kind."""

        def sample(keys: Sequence[str]) -> str:
            return ", ".join(keys[:4]) + (f", … (+{len(keys) - 4})" if len(keys) > 4 else "")

        rows = [f"weights {self.source}:", f"  loaded  {len(self.loaded):>5}  {sample(self.loaded)}"]
        rows.append(f"  new     {len(self.new):>5}  {sample(self.new)}")
        dropped = [f"{k} ({why})" for k, why in self.dropped.items()]
        rows.append(f"  dropped {len(self.dropped):>5}  {sample(dropped)}")
        return "\n".join(rows)


def source_tensors(
    spec: WeightsSpec, backbone: Callable[..., VisionTransformer], num_classes: int, stock: VisionTransformer
) -> tuple[dict[str, Tensor], dict[str, str], Tensor | None]:
    """(tensors fitted to the stock geometry, tensors dropped already with why, the file's own pos_embed).

    `hub:` goes through timm (download, its own filtering); a head timm could not load (another class count)
    or that `pretrained_head=false` re-initialised is not a loaded tensor. `file:` is read here and filtered
    against the stock backbone (timm resamples the position embedding and the patch kernel)."""
    if spec.source == "hub":
        model = backbone(num_classes=num_classes, weights=f"hub:{spec.ref}")
        tensors = dict(model.state_dict())
        pretrained_classes = (getattr(model, "pretrained_cfg", None) or {}).get("num_classes")
        keep_head = bool(_keyword(backbone, "pretrained_head", True)) and pretrained_classes == num_classes
        dropped = {}
        for key in HEAD_KEYS:
            if key in tensors and not keep_head:
                del tensors[key]
                dropped[key] = "head: not in the pre-trained weights or pretrained_head=false"
        return tensors, dropped, None
    raw = read_state_dict(spec.ref)
    original_pos = raw.get("pos_embed")
    head_slot = {k: v for k, v in raw.items() if k.startswith(HEAD_SLOT)}  # not timm's to filter
    fitted = checkpoint_filter_fn({k: v for k, v in raw.items() if k not in head_slot}, stock)
    return {**fitted, **head_slot}, {}, original_pos


def load_head_slot(
    head: torch.nn.Module | None, tensors: Mapping[str, Tensor], keep: bool, report: WeightsReport
) -> None:
    """A vitlab checkpoint's head-slot tensors go into the composed model's head slot when it is the same head
    (names and shapes) and `pretrained_head` is true; otherwise they are reported as dropped, with why."""
    given = {k[len(HEAD_SLOT) :]: v for k, v in tensors.items() if k.startswith(HEAD_SLOT)}
    own = head.state_dict() if head is not None else {}
    fits = (
        bool(given) and keep and given.keys() == own.keys() and all(own[k].shape == v.shape for k, v in given.items())
    )
    if fits:
        head.load_state_dict(given)  # type: ignore[union-attr]
        report.loaded += [f"model.head.{k}" for k in sorted(given)]
        return
    why = "head slot: pretrained_head=false" if not keep else "head slot: another head (slot, class count)"
    report.dropped.update({f"model.head.{k}": why for k in given})
    report.new += [f"model.head.{k}" for k in sorted(own)]


def _keyword(factory: Any, name: str, default: Any = None) -> Any:
    return getattr(factory, "keywords", {}).get(name, default)


def load_pretrained(
    vit: VisionTransformer,
    tensors: Mapping[str, Tensor],
    spec: WeightsSpec,
    stock_shapes: Mapping[str, torch.Size],
    replaced_by: Mapping[str, str],
    replace_pretrained: Sequence[str] = (),
    keep_head: bool = True,
    original_pos_embed: Tensor | None = None,
    dropped: Mapping[str, str] | None = None,
) -> WeightsReport:
    """Load `tensors` into the composed `vit` by name; see the module docstring.

    Args:
        stock_shapes: the stock backbone's tensors (name -> shape), before any slot was installed.
        replaced_by: tensor name -> the slot (`stem`, `mixer`, ...) that removed or reshaped it.
        replace_pretrained: name prefixes whose replacement by a slot is allowed (`model.replace_pretrained`).
    """
    source = f"{spec.source}:{spec.ref}"
    report = WeightsReport(source=source, dropped=dict(dropped or {}))
    own = vit.state_dict()
    load: dict[str, Tensor] = {}
    refused: dict[str, list[str]] = {}
    unexpected, wrong_shape = [], []
    for key, value in tensors.items():
        if key.startswith(HEAD_SLOT):
            continue  # the head slot's, see `load_head_slot`
        if key in HEAD_KEYS and (not keep_head or key not in own or own[key].shape != value.shape):
            report.dropped[key] = "head: another class count, a head slot, or pretrained_head=false"
            continue
        if key == "pos_embed" and key in own and own[key].shape != value.shape:
            value = _pos_embed_for(vit, original_pos_embed if original_pos_embed is not None else value)
        if key in own and own[key].shape == value.shape:
            load[key] = value
        elif key in replaced_by and _matches(key, replace_pretrained):
            report.dropped[key] = f"replaced by model/{replaced_by[key]} (model.replace_pretrained)"
        elif key in replaced_by:
            refused.setdefault(replaced_by[key], []).append(key)
        elif key in own:
            wrong_shape.append(f"{key} {tuple(value.shape)} vs {tuple(own[key].shape)}")
        else:
            unexpected.append(key)
    if refused:
        raise ConfigError(_refusal(refused, source))
    missing = [k for k in own if k not in tensors and stock_shapes.get(k) == own[k].shape and k not in HEAD_KEYS]
    if missing or unexpected or wrong_shape:
        problems = [
            f"{label}: {', '.join(keys[:4])}{' ...' if len(keys) > 4 else ''}"
            for label, keys in (("missing", missing), ("unexpected", unexpected), ("wrong shape", wrong_shape))
            if keys
        ]
        raise ConfigError(
            f"{WEIGHTS_KEY}={source} does not fit the model ({'; '.join(problems)}). Check that model/backbone "
            "(name, embed_dim, depth, num_heads, mlp_ratio, class token) and the slots match the model the "
            "weights were trained with."
        )
    vit.load_state_dict(load, strict=False)
    report.loaded = sorted(load)
    report.new = sorted(k for k in own if k not in load)
    return report


def _pos_embed_for(vit: VisionTransformer, pos_embed: Tensor) -> Tensor:
    """A learned position embedding resampled to the composed model's token grid (timm's resampling)."""
    prefix = 0 if getattr(vit, "no_embed_class", False) else vit.num_prefix_tokens
    old_side = math.isqrt(pos_embed.shape[1] - prefix)
    return resample_abs_pos_embed(
        pos_embed, new_size=list(vit.patch_embed.grid_size), old_size=[old_side, old_side], num_prefix_tokens=prefix
    )


def _refusal(refused: Mapping[str, list[str]], source: str) -> str:
    slots = sorted(refused)
    keys = [k for slot in slots for k in refused[slot]]
    prefixes = sorted({k.split(".")[0] for k in keys})
    shown = ", ".join(keys[:4]) + (f" and {len(keys) - 4} more" if len(keys) > 4 else "")
    return (
        f"The {' and '.join(f'model/{s}' for s in slots)} slot{'s' if len(slots) > 1 else ''} would replace "
        f"tensors that {WEIGHTS_KEY}={source} provides "
        f"({shown}): they would be thrown away and trained from scratch. Either drop the slot "
        f"({' '.join(f'~model/{s}' for s in slots)}), or allow the replacement explicitly "
        f"(model.replace_pretrained=[{','.join(prefixes)}])."
    )
