"""`QKVAttention`: timm's attention layout (`qkv`, `proj`) around a pluggable (q, k, v) kernel.

The projections are parameter-for-parameter timm's, so a pre-trained timm ViT loads into any kernel; what a
kernel adds (Linformer's sequence projections, Nyström's residual convolution) lives under `kernel.`.
"""

from __future__ import annotations

from typing import Protocol

import torch
import torch.nn.functional as F
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

    def rope_offset(self, n: int) -> int:
        """Position of the first of n real tokens when RoPE rotates them (a kernel that pads in front before
        rotating, as the ViX code's Nyström does, shifts them by its padding)."""
        return 0

    def sequence_projections(self, n: int, dtype: torch.dtype) -> tuple[Tensor, Tensor] | None:
        """(E, F), each (n, k), if the kernel mixes keys and values only through fixed linear projections
        along the sequence (Linformer). Projections commute with the linear q/k/v maps, so `QKVAttention`
        then projects the tokens first and computes k keys/values instead of n; None for other kernels."""
        return None

    def attend_projected(self, q: Tensor, k: Tensor, v: Tensor) -> Tensor:  # pragma: no cover - Linformer only
        raise NotImplementedError

    def implied_attention(self, q: Tensor, k: Tensor) -> Tensor:  # pragma: no cover - abstract
        """The (B, H, N, N) matrix A with `forward(q, k, v) = A @ v + residual_matrix(N) @ v` in eval mode (no
        attention dropout): what the kernel's mixing of the values amounts to, computed with the forward's own
        numerics (docs/attention.md). Every kernel mixes values linearly given q and k, so every kernel has one."""
        raise NotImplementedError

    def residual_matrix(self, n: int, dtype: torch.dtype, device: torch.device) -> Tensor | None:
        """(H, n, n): a fixed linear map of the values the kernel adds besides its attention (Nyström's residual
        convolution); None for kernels without one."""
        return None


def at_least_fp32(*tensors: Tensor) -> tuple[Tensor, ...]:
    """Upcast half/bfloat16 tensors (kernels with exp or matrix inversion run in fp32; fp64 stays fp64)."""
    return tuple(t.float() if t.dtype in (torch.float16, torch.bfloat16) else t for t in tensors)


class KernelFactory(Protocol):
    """What a `model/mixer/kernel` config instantiates to (Hydra `_partial_`)."""

    def __call__(self, *, geo: TokenGeometry, num_heads: int, head_dim: int, attn_drop: float) -> AttentionKernel: ...


class RotaryLike(Protocol):
    def __call__(self, q: Tensor, k: Tensor, offset: int = 0) -> tuple[Tensor, Tensor]: ...


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
        projections = self.kernel.sequence_projections(N, x.dtype) if self.rope is None else None
        if projections is not None:
            return self._forward_projected(x, *projections)
        q, k, v = self.qkv_heads(x)
        out = self.kernel(q, k, v).transpose(1, 2).reshape(B, N, self.attn_dim)
        return self.proj_drop(self.proj(out))

    def qkv_heads(self, x: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """Per-head (B, H, N, D) queries, keys and values of tokens x as the kernel sees them (q and k rotated when
        RoPE is installed; (B, 1, N, D) keys/values with `one_kv_head`). Also what `implied_attention` reads."""
        B, N, _ = x.shape
        # q, k, v from slices of the fused `qkv` weight (timm's parameter, so timm checkpoints load): three
        # products instead of one, but the backward pass then needs no stacking/permuting of activations
        # (measured faster on CPU than both timm's reshape+unbind and a split of the fused output)
        parts = [self._heads(F.linear(x, w, b), B, N) for w, b in self._qkv_slices()]
        # ViX code: with share_kv the values are the keys *before* rotation (ViL-RoPE)
        q, k, v = parts if len(parts) == 3 else (*parts, parts[1])
        if self.rope is not None:
            q, k = self.rope(q, k, self.kernel.rope_offset(N))
        return q, k, v

    def implied_attention(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """(A, v) for tokens x: the kernel's implied (B, H, N, N) attention and the values it mixes, so that in eval
        mode `forward(x) = proj(merge_heads(A @ v + R @ v))` with R = `kernel.residual_matrix(N)` (if any)."""
        q, k, v = self.qkv_heads(x)
        return self.kernel.implied_attention(q, k), v

    def _forward_projected(self, x: Tensor, proj_k: Tensor, proj_v: Tensor) -> Tensor:
        """Linformer without RoPE: Eᵀ(x W_k + b_k) = (Eᵀx) W_k + (Eᵀ1) b_k, so keys and values are computed
        for k projected tokens instead of all n (two of the three big projections disappear)."""
        B, N, _ = x.shape
        (w_q, b_q), (w_k, b_k), *rest = self._qkv_slices()

        def projected(proj: Tensor, w: Tensor, b: Tensor | None) -> Tensor:
            out = F.linear(proj.T @ x, w)  # (B, k, C)
            if b is not None:
                out = out + proj.sum(dim=0)[:, None] * b
            return self._heads(out, B, proj.shape[1])

        q = self._heads(F.linear(x, w_q, b_q), B, N)
        k = projected(proj_k, w_k, b_k)
        v = k if self.kernel.shares_kv else projected(proj_v, *rest[0])
        out = self.kernel.attend_projected(q, k, v).transpose(1, 2).reshape(B, N, self.attn_dim)
        return self.proj_drop(self.proj(out))

    def _qkv_slices(self) -> list[tuple[Tensor, Tensor | None]]:
        """(weight, bias) of q, k and (unless values are the keys) v: row slices of `qkv`."""
        sizes = [self.attn_dim, self.kv_dim] + ([] if self.kernel.shares_kv else [self.kv_dim])
        biases = self.qkv.bias.split(sizes) if self.qkv.bias is not None else [None] * len(sizes)
        return list(zip(self.qkv.weight.split(sizes), biases, strict=True))

    def _heads(self, t: Tensor, B: int, N: int) -> Tensor:
        return t.reshape(B, N, -1, self.head_dim).transpose(1, 2)

    def extra_repr(self) -> str:
        return f"num_heads={self.num_heads}, head_dim={self.head_dim}, rope={type(self.rope).__name__}"
