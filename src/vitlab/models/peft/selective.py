"""PEFT methods that add nothing and choose which existing tensors train: linear probe, full, BitFit."""

from __future__ import annotations

from vitlab.models.classifier import Classifier
from vitlab.models.peft.common import backbone_parameters


def linear_probe(model: Classifier) -> Classifier:
    """Train the head only: every backbone tensor is frozen (also what a slot added, e.g. step sizes)."""
    for _, p in backbone_parameters(model):
        p.requires_grad_(False)
    return model


def full(model: Classifier) -> Classifier:
    """Full fine-tuning: every tensor trains (the upper reference of PEFT tables)."""
    for p in model.parameters():
        p.requires_grad_(True)
    return model


def bitfit(model: Classifier) -> Classifier:
    """BitFit (Ben Zaken et al., 2022): train every bias of the backbone — attention, MLP, LayerNorm and the
    patch embedding — and the head. ViT-B/16: 12·8,448 + 2·768 = 102,912 parameters."""
    for name, p in backbone_parameters(model):
        if name.endswith("bias"):
            p.requires_grad_(True)
    return model
