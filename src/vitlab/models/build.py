"""`build_classifier`: the one place where the model slots are composed, always in the same order.

    backbone(num_classes) -> check_seams -> stem -> mixer -> pos_embed -> step_size -> head
        -> pre-trained weights -> freeze -> peft -> grad checkpointing

Each slot is `null` (off) or a factory bound by Hydra (`_partial_: true`): stem, mixer, pos_embed and
step_size are adapters `(vit) -> vit` that change the built backbone at one seam; `head` is called as
`head(geo, num_classes)`; `peft` wraps the finished `Classifier`. The order is fixed: a mixer sees the final
token geometry (a Linformer's sequence length), RoPE is installed into the final mixers (and rejects
mixers without queries and keys), and step sizes see the final blocks. Pre-trained weights
(`model.backbone.weights`) are loaded into the composed model, after every slot's own initialisation, with a
report (`vitlab.models.pretrained`). `freeze` (see `vitlab.models.freeze`) runs before `peft`, so a PEFT
method only adds or unfreezes what it trains. Gradient checkpointing (`vitlab.models.grad_checkpointing`) is
switched on last, so it covers every block with the slots and PEFT wrappers installed in it.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence

from timm.models.vision_transformer import VisionTransformer
from torch import nn

from vitlab.models.classifier import Classifier
from vitlab.models.freeze import freeze_pretrained, parameter_shapes, resolve_freeze
from vitlab.models.geometry import TokenGeometry, geometry_of
from vitlab.models.grad_checkpointing import enable_grad_checkpointing
from vitlab.models.pretrained import WeightsReport, load_head_slot, load_pretrained, shapes, source_tensors
from vitlab.models.seams import check_seams
from vitlab.models.seeded_drop_path import install_seeded_drop_path
from vitlab.models.weights import parse_weights

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
    replace_pretrained: Sequence[str] = (),
    grad_checkpointing: bool = False,
) -> Classifier:
    """Compose a classifier from a backbone factory and the (optional) slots, in the documented order.

    `freeze`: `backbone` freezes every pre-trained tensor, `none` trains everything, `auto` (default) is
    `backbone` when `step_size` or `peft` is set and `none` otherwise. `replace_pretrained`: name prefixes
    (e.g. `patch_embed`) of loaded tensors a slot may replace; any other replacement is refused.
    `grad_checkpointing`: recompute every block's activations in the backward pass (less memory).
    The weights report, when weights were loaded, is the returned model's `weights_report`.
    """
    if num_classes < 1:
        raise ValueError(f"num_classes must be positive, got {num_classes}")
    frozen = resolve_freeze(freeze, step_size is not None or peft is not None)
    spec = parse_weights(getattr(backbone, "keywords", {}).get("weights"))
    classes = 0 if head is not None else num_classes
    vit = backbone(num_classes=classes, weights="none") if spec.source != "none" else backbone(num_classes=classes)
    check_seams(vit)
    pretrained, stock = parameter_shapes(vit), shapes(vit)
    tensors, dropped, original_pos = (
        source_tensors(spec, backbone, classes, vit) if spec.source != "none" else ({}, {}, None)
    )
    if getattr(stem, "keywords", {}).get("only_from_scratch") and "patch_embed.proj.weight" in tensors:
        log.info("model/stem=auto: %s provides a patch embedding, which is kept (no conv stem)", spec.ref)
        stem = None
    adapters = {"stem": stem, "pos_embed": pos_embed, "mixer": mixer, "step_size": step_size}
    replaced_by: dict[str, str] = {}
    for slot in ADAPTER_SLOTS:
        adapter = adapters[slot]
        if adapter is not None:
            before = shapes(vit)
            vit = adapter(vit)
            after = shapes(vit)
            replaced_by.update({k: slot for k, s in before.items() if after.get(k) != s and k not in replaced_by})
    head_module = head(geometry_of(vit), num_classes) if head is not None else None
    report: WeightsReport | None = None
    if spec.source != "none":
        keep_head = bool(getattr(backbone, "keywords", {}).get("pretrained_head", True))
        report = load_pretrained(
            vit, tensors, spec, stock, replaced_by, replace_pretrained, keep_head, original_pos, dropped
        )
        load_head_slot(head_module, tensors, keep_head, report)
        # frozen: what came from the weights *and* belongs to the stock backbone (a slot's own tensors train)
        pretrained = {k: s for k, s in pretrained.items() if k in report.loaded}
    if frozen:
        if spec.source == "none":
            log.warning("model.freeze: the backbone is frozen but has no pre-trained weights (weights=none)")
        freeze_pretrained(vit, pretrained)
    model = Classifier(vit, head_module)
    model = peft(model) if peft is not None else model
    # drop-path drawn from each sample's seed: the same masks on any number of processes (docs/resume.md)
    install_seeded_drop_path(model)
    enable_grad_checkpointing(model, grad_checkpointing)
    model.weights_report = report
    return model
