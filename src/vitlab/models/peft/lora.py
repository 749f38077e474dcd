"""LoRA (Hu et al., 2022) on the attention projections: W x + (α/r)·B A x, B = 0 at init (identity).

- `lora`: Hugging Face `peft` on timm's fused `qkv` (one rank-r update of the whole 3D×D matrix), the
  layout of the V-PETL and NOAH VTAB tables. ViT-B/16, r = 8: 12·8·(768 + 2304) = 294,912 parameters.
- `lora_qv`: the original paper's choice, separate rank-r updates of the query and value rows only (keys
  untouched). The fused `qkv` cannot express that in `peft`, so vitlab adds it as a forward hook on `qkv`.
  ViT-B/16, r = 8: 12·2·8·(768 + 768) = 294,912 parameters.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from vitlab.extras import require
from vitlab.models.classifier import Classifier
from vitlab.models.peft.common import require_called

QKV_PATTERN = r"blocks\.\d+\.attn\.qkv"


def lora(model: Classifier, r: int = 8, alpha: float = 8.0, dropout: float = 0.0) -> Classifier:
    """Inject `peft` LoRA layers into every block's fused `qkv`; only the LoRA matrices (and the head) train."""
    require("peft", "model/peft=lora")
    from peft import LoraConfig, inject_adapter_in_model

    require_called(model, "lora", ("qkv",))
    # peft freezes every non-LoRA tensor of the model it injects into and renames `qkv.weight` to
    # `qkv.base_layer.weight`; restore what model.freeze decided (step sizes, a custom head keep training).
    trainable = {n for n, p in model.backbone.named_parameters() if p.requires_grad}
    config = LoraConfig(r=r, lora_alpha=alpha, lora_dropout=dropout, target_modules=QKV_PATTERN, bias="none")
    model.backbone = inject_adapter_in_model(config, model.backbone)
    for name, p in model.backbone.named_parameters():
        p.requires_grad_("lora_" in name or name.replace(".base_layer", "") in trainable)
    return model


class QVLowRank(nn.Module):
    """ΔW x for the query and value rows of a fused `qkv` (keys get no update): (α/r)·[B_q A_q x, 0, B_v A_v x]."""

    def __init__(self, dim: int, out_dim: int, r: int, alpha: float, dropout: float) -> None:
        super().__init__()
        self.q_down, self.v_down = nn.Linear(dim, r, bias=False), nn.Linear(dim, r, bias=False)
        self.q_up, self.v_up = nn.Linear(r, out_dim, bias=False), nn.Linear(r, out_dim, bias=False)
        self.scale, self.drop = alpha / r, nn.Dropout(dropout)
        for down in (self.q_down, self.v_down):  # LoRA's init: A as nn.Linear's default, B = 0
            nn.init.kaiming_uniform_(down.weight, a=math.sqrt(5))
        for up in (self.q_up, self.v_up):
            nn.init.zeros_(up.weight)

    def forward(self, x: Tensor) -> Tensor:
        x = self.drop(x)
        dq, dv = self.q_up(self.q_down(x)), self.v_up(self.v_down(x))
        return self.scale * torch.cat([dq, torch.zeros_like(dq), dv], dim=-1)


def _add_qv_update(qkv: nn.Linear, _args: tuple[Tensor, ...], out: Tensor) -> Tensor:
    return out + qkv.lora_qv(_args[0])


def lora_qv(model: Classifier, r: int = 8, alpha: float = 8.0, dropout: float = 0.0) -> Classifier:
    """Add rank-r LoRA updates to the query and value rows of every block's `qkv` (hooked, names unchanged)."""
    require_called(model, "lora_qv", ("qkv",))
    for block in model.backbone.blocks:
        qkv = block.attn.qkv
        qkv.lora_qv = QVLowRank(qkv.in_features, qkv.out_features // 3, r, alpha, dropout).to(qkv.weight.device)
        qkv.register_forward_hook(_add_qv_update)
    return model
