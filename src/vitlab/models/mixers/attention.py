"""`QKVAttention`: timm's attention layout (`qkv`, `proj`) around a pluggable (q, k, v) kernel.

The projections are parameter-for-parameter timm's, so a pre-trained timm ViT loads into any kernel; what a
kernel adds (Linformer's sequence projections, Nyström's residual convolution) lives under `kernel.`.
"""

from __future__ import annotations

from typing import Protocol

import torch
from torch import Tensor, nn

from vitlab.models.geometry import TokenGeometry


class AttentionKernel(nn.Module):
    """Maps per-head queries, keys and values (B, H, N, D) to per-head outputs (B, H, N, D).

    Class attributes tell `QKVAttention` how to lay out its `qkv` projection:
    `kv_heads` (None: one key/value head per query head; Linformer's `one_kv_head` sets 1) and
    `shares_kv` (values are the keys, as in Linformer's `share_kv`: `qkv` then has no value slice).
    """

    kv_heads: int | None = None
    shares_kv: bool = False

    def forward(self, q: Tensor, k: Tensor, v: Tensor) -> Tensor:  # pragma: no cover - abstract
        raise NotImplementedError


def at_least_fp32(*tensors: Tensor) -> tuple[Tensor, ...]:
    """Upcast half/bfloat16 tensors (kernels with exp or matrix inversion run in fp32; fp64 stays fp64)."""
    return tuple(t.float() if t.dtype in (torch.float16, torch.bfloat16) else t for t in tensors)


class KernelFactory(Protocol):
    """What a `model/mixer/kernel` config instantiates to (Hydra `_partial_`)."""

    def __call__(self, *, geo: TokenGeometry, num_heads: int, head_dim: int, attn_drop: float) -> AttentionKernel: ...


class RotaryLike(Protocol):
    def __call__(self, q: Tensor, k: Tensor) -> tuple[Tensor, Tensor]: ...


class QKVAttention(nn.Module):
    """Multi-head attention with timm's parameter names and an exchangeable kernel.

    forward: qkv projection -> split heads -> (RoPE on q, k) -> kernel -> merge heads -> proj.
    """

    has_qk = True  # RoPE can be installed (see vitlab.models.adapters.rope)

    def __init__(
        self,
        dim: int,
        num_heads: int,
        kernel: AttentionKernel,
        head_dim: int | None = None,
        qkv_bias: bool = False,
        proj_bias: bool = True,
        proj_drop: float = 0.0,
    ) -> None:
        super().__init__()
        self.num_heads = num_heads
        self.head_dim = head_dim or dim // num_heads
        self.attn_dim = num_heads * self.head_dim
        self.kv_dim = (kernel.kv_heads or num_heads) * self.head_dim
        self.kernel = kernel
        qkv_out = self.attn_dim + self.kv_dim * (1 if kernel.shares_kv else 2)
        self.qkv = nn.Linear(dim, qkv_out, bias=qkv_bias)
        self.proj = nn.Linear(self.attn_dim, dim, bias=proj_bias)
        self.proj_drop = nn.Dropout(proj_drop)
        self.rope: RotaryLike | None = None

    def forward(self, x: Tensor, attn_mask: Tensor | None = None, is_causal: bool = False) -> Tensor:
        if attn_mask is not None or is_causal:
            raise ValueError("vitlab mixers do not take attention masks (timm passes none for images)")
        B, N, _ = x.shape
        qkv = self.qkv(x)
        if self.kv_dim == self.attn_dim and not self.kernel.shares_kv:  # timm's layout: one reshape, no copies
            q, k, v = qkv.reshape(B, N, 3, self.num_heads, self.head_dim).permute(2, 0, 3, 1, 4).unbind(0)
        else:
            sizes = [self.attn_dim, self.kv_dim] + ([] if self.kernel.shares_kv else [self.kv_dim])
            parts = [self._heads(t, B, N) for t in qkv.split(sizes, dim=-1)]
            # ViX code: with share_kv the values are the keys *before* rotation (ViL-RoPE)
            q, k, v = parts if len(parts) == 3 else (*parts, parts[1])
        if self.rope is not None:
            q, k = self.rope(q, k)
        out = self.kernel(q, k, v).transpose(1, 2).reshape(B, N, self.attn_dim)
        return self.proj_drop(self.proj(out))

    def _heads(self, t: Tensor, B: int, N: int) -> Tensor:
        return t.reshape(B, N, -1, self.head_dim).transpose(1, 2)

    def extra_repr(self) -> str:
        return f"num_heads={self.num_heads}, head_dim={self.head_dim}, rope={type(self.rope).__name__}"
