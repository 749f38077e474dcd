"""Exact softmax attention: PyTorch SDPA (timm's path) or the naive matrix form (the ViX paper's baseline)."""

from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor

from vitlab.errors import ConfigError
from vitlab.models.geometry import TokenGeometry
from vitlab.models.mixers.attention import AttentionKernel, at_least_fp32

Impl = Literal["sdpa", "naive"]


class SoftmaxKernel(AttentionKernel):
    """softmax(q kᵀ / √d) v. `impl=sdpa` is timm's fused path; `naive` materialises the N×N matrix."""

    def __init__(self, geo: TokenGeometry, num_heads: int, head_dim: int, attn_drop: float = 0.0, impl: Impl = "sdpa"):
        super().__init__()
        if impl not in ("sdpa", "naive"):
            raise ConfigError(f"model.mixer.kernel.impl={impl!r} is not one of: sdpa, naive.")
        self.impl, self.attn_drop, self.scale = impl, attn_drop, head_dim**-0.5

    def forward(self, q: Tensor, k: Tensor, v: Tensor) -> Tensor:
        drop = self.attn_drop if self.training else 0.0
        if self.impl == "sdpa":
            return F.scaled_dot_product_attention(q, k, v, dropout_p=drop)
        attn = ((q * self.scale) @ k.transpose(-2, -1)).softmax(dim=-1)
        return F.dropout(attn, drop, self.training) @ v

    def implied_attention(self, q: Tensor, k: Tensor) -> Tensor:
        """softmax(q kᵀ / √d), the naive form's matrix (fp32 at least); rows sum to 1."""
        with torch.autocast(device_type=q.device.type, enabled=False):
            q, k = at_least_fp32(q, k)
            return ((q * self.scale) @ k.transpose(-2, -1)).softmax(dim=-1)

    def extra_repr(self) -> str:
        return f"impl={self.impl}"
