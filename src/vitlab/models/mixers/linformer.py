"""Linformer attention: keys and values projected along the sequence to k rows (Wang et al. 2020, eq. 7).

    head = softmax(q (E K)ᵀ / √d) (F V),   E, F ∈ ℝ^{k×n}
Options as in lucidrains/linformer, which the ViX code uses: `share_kv` makes the values the keys (one
projection E = F, no value slice in `qkv`), `one_kv_head` shares one key/value head across all query heads.
E needs the sequence length n, read from the model's geometry, so a dynamic image size is refused.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from vitlab.errors import ConfigError
from vitlab.models.geometry import TokenGeometry
from vitlab.models.mixers.attention import AttentionKernel


def _sequence_projection(seq_len: int, k: int) -> nn.Parameter:
    bound = 1 / math.sqrt(k)  # lucidrains' init_: U(±1/√k)
    return nn.Parameter(torch.empty(seq_len, k).uniform_(-bound, bound))


class LinformerKernel(AttentionKernel):
    """Softmax attention against k projected keys/values: O(n·k) time and memory instead of O(n²)."""

    def __init__(
        self,
        geo: TokenGeometry,
        num_heads: int,
        head_dim: int,
        attn_drop: float = 0.0,
        k: int = 64,
        share_kv: bool = False,
        one_kv_head: bool = False,
    ) -> None:
        super().__init__()
        if geo.dynamic_img_size:
            raise ConfigError(
                "model/mixer=linformer projects a fixed sequence length, but model.backbone.dynamic_img_size=true. "
                "Use a fixed image size, or a mixer without a length-bound projection (softmax, performer, nystrom)."
            )
        if k < 1:
            raise ConfigError(f"model.mixer.kernel.k={k} must be a positive integer.")
        self.seq_len, self.k, self.attn_drop = geo.seq_len, k, attn_drop
        self.kv_heads = 1 if one_kv_head else None
        self.shares_kv = share_kv
        self.proj_k = _sequence_projection(self.seq_len, k)
        self.proj_v = None if share_kv else _sequence_projection(self.seq_len, k)

    def sequence_projections(self, n: int, dtype: torch.dtype) -> tuple[Tensor, Tensor]:
        """(E, F) for a sequence of n tokens: the first n rows (shorter sequences, as lucidrains does)."""
        if n > self.seq_len:
            raise ValueError(f"Linformer was built for {self.seq_len} tokens but got {n}")
        proj_k = self.proj_k[:n].to(dtype)
        return proj_k, proj_k if self.proj_v is None else self.proj_v[:n].to(dtype)

    def forward(self, q: Tensor, k: Tensor, v: Tensor) -> Tensor:
        """Per-head keys/values of all n tokens (the path RoPE needs: rotation before projection)."""
        proj_k, proj_v = self.sequence_projections(k.shape[-2], k.dtype)
        return self.attend_projected(q, self._project(proj_k, k), self._project(proj_v, v))

    def attend_projected(self, q: Tensor, k: Tensor, v: Tensor) -> Tensor:
        """Softmax attention of (B, H, n, D) queries over (B, H_kv, k, D) projected keys/values."""
        if k.shape[1] != q.shape[1]:  # one_kv_head: share the single key/value head
            k, v = k.expand(-1, q.shape[1], -1, -1), v.expand(-1, q.shape[1], -1, -1)
        return F.scaled_dot_product_attention(q, k, v, dropout_p=self.attn_drop if self.training else 0.0)

    def projected_attention(self, q: Tensor, k: Tensor) -> Tensor:
        """softmax(q (E K)ᵀ / √d): the (B, H, n, k) weights of the queries over the k projected keys (rows sum to 1;
        SDPA's scale, 1/√d of the query width)."""
        proj_k, _ = self.sequence_projections(k.shape[-2], k.dtype)
        keys = self._project(proj_k, k).expand(-1, q.shape[1], -1, -1)  # one_kv_head: one head for all
        return ((q * q.shape[-1] ** -0.5) @ keys.transpose(-2, -1)).softmax(dim=-1)

    def implied_attention(self, q: Tensor, k: Tensor) -> Tensor:
        """softmax(q (E K)ᵀ / √d) Fᵀ: the projected attention times the value projection, an (n, n) matrix per head.
        Its rows sum to the weights times F's column sums, not to 1, and it has negative entries (F is learned)."""
        _, proj_v = self.sequence_projections(k.shape[-2], k.dtype)
        return self.projected_attention(q, k) @ proj_v.T

    @staticmethod
    def _project(proj: Tensor, t: Tensor) -> Tensor:
        """Eᵀ t along the sequence, done on the (B, n, H·D) token layout (a view when t comes from `qkv`)."""
        B, H, n, D = t.shape
        tokens = t.transpose(1, 2).reshape(B, n, H * D)
        return (proj.T @ tokens).reshape(B, -1, H, D).transpose(1, 2)

    def extra_repr(self) -> str:
        return f"seq_len={self.seq_len}, k={self.k}, share_kv={self.shares_kv}, one_kv_head={self.kv_heads == 1}"
