"""Helpers shared by the PEFT methods: where the blocks are and which modules are really called."""

from __future__ import annotations

from timm.models.vision_transformer import Attention
from torch import nn

from vitlab.errors import ConfigError
from vitlab.models.classifier import Classifier
from vitlab.models.mixers.attention import QKVAttention


def require_called(model: Classifier, method: str, targets: tuple[str, ...]) -> None:
    """Refuse a method that hooks or wraps `targets` (module names inside `blocks[i].attn`) when the
    block's attention uses that module's weight functionally: a vitlab `QKVAttention` slices `qkv.weight`
    instead of calling `qkv`, so a hook there would train parameters that never reach the output."""
    for i, block in enumerate(model.backbone.blocks):
        attn = block.attn
        bypassed = isinstance(attn, QKVAttention) and "qkv" in targets
        if bypassed or not all(hasattr(attn, t) for t in targets):
            raise ConfigError(
                f"model/peft={method} needs the stock timm attention (it hooks attn.{'/'.join(targets)}); "
                f"blocks[{i}].attn is {type(attn).__name__}. Leave model/mixer null, or choose a PEFT method "
                "that does not touch the attention projections: bitfit, adaptformer, full or linear_probe."
            )


def require_stock_attention(model: Classifier, method: str, why: str) -> None:
    """Refuse a method that needs timm's own softmax attention in every block (e.g. VPT's extra tokens)."""
    for i, block in enumerate(model.backbone.blocks):
        if not isinstance(block.attn, Attention):
            raise ConfigError(
                f"model/peft={method} needs timm's softmax attention in every block ({why}); blocks[{i}].attn "
                f"is {type(block.attn).__name__}. Leave model/mixer null, or choose another PEFT method."
            )


def backbone_parameters(model: Classifier) -> list[tuple[str, nn.Parameter]]:
    """Named parameters of the backbone without timm's own classifier (`head.`)."""
    return [(n, p) for n, p in model.backbone.named_parameters() if not n.startswith("head.")]
