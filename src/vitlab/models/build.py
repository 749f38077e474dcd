"""`build_classifier`: the one place where the model slots are composed, always in the same order.

    backbone(num_classes) -> check_seams -> stem -> mixer -> pos_embed -> step_size -> head -> freeze -> peft

Each slot is `null` (off) or a factory bound by Hydra (`_partial_: true`): stem, mixer, pos_embed and
step_size are adapters `(vit) -> vit` that change the built backbone at one seam; `head` is called as
`head(geo, num_classes)`; `peft` wraps the finished `Classifier`. The order is fixed: a mixer sees the final
token geometry (a Linformer's sequence length), RoPE is installed into the final mixers (and rejects
mixers without queries and keys), and step sizes see the final blocks. `freeze` (see
`vitlab.models.freeze`) runs before `peft`, so a PEFT method only adds or unfreezes what it trains.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

from timm.models.vision_transformer import VisionTransformer
from torch import nn

from vitlab.models.classifier import Classifier
from vitlab.models.freeze import freeze_pretrained, parameter_shapes, resolve_freeze
from vitlab.models.geometry import TokenGeometry, geometry_of
from vitlab.models.seams import check_seams

Adapter = Callable[[VisionTransformer], VisionTransformer]
BackboneFactory = Callable[..., VisionTransformer]
HeadFactory = Callable[[TokenGeometry, int], nn.Module]
Peft = Callable[[Classifier], Classifier]

ADAPTER_SLOTS = ("stem", "mixer", "pos_embed", "step_size")

log = logging.getLogger(__name__)


def build_classifier(
    backbone: BackboneFactory,
    num_classes: int,
    stem: Adapter | None = None,
    pos_embed: Adapter | None = None,
    mixer: Adapter | None = None,
    step_size: Adapter | None = None,
    head: HeadFactory | None = None,
    peft: Peft | None = None,
    freeze: str = "auto",
) -> Classifier:
    """Compose a classifier from a backbone factory and the (optional) slots, in the documented order.

    `freeze`: `backbone` freezes every pre-trained tensor, `none` trains everything, `auto` (default) is
    `backbone` when `step_size` or `peft` is set and `none` otherwise.
    """
    if num_classes < 1:
        raise ValueError(f"num_classes must be positive, got {num_classes}")
    frozen = resolve_freeze(freeze, step_size is not None or peft is not None)
    vit = backbone(num_classes=0 if head is not None else num_classes)
    check_seams(vit)
    pretrained = parameter_shapes(vit)
    adapters = {"stem": stem, "pos_embed": pos_embed, "mixer": mixer, "step_size": step_size}
    for slot in ADAPTER_SLOTS:
        adapter = adapters[slot]
        if adapter is not None:
            vit = adapter(vit)
    head_module = head(geometry_of(vit), num_classes) if head is not None else None
    if frozen:
        if str(getattr(backbone, "keywords", {}).get("weights", "none")).lower() in ("none", "null", ""):
            log.warning("model.freeze: the backbone is frozen but has no pre-trained weights (weights=none)")
        freeze_pretrained(vit, pretrained)
    model = Classifier(vit, head_module)
    return peft(model) if peft is not None else model
