"""Performer (FAVOR+) attention: softmax kernel approximated with positive orthogonal random features.

Choromanski et al. 2021, "Rethinking Attention with Performers", Lemma 1 / eq. (5):
    φ(x) = exp(wᵢᵀx − ‖x‖²/2) / √m  with orthogonal wᵢ,   Att(q, k, v) ≈ D⁻¹ φ(Q) (φ(K)ᵀ V),  D = diag(φ(Q) φ(K)ᵀ 1).
The data normaliser d^(-1/4) on q and k gives the 1/√d temperature; the max-subtraction is the usual
numerical stabiliser (per query row, and over all keys for K so that it cancels in D⁻¹). Settings follow the
ViX code: m = ⌊d·ln d⌋ features, kernel ε = 1e-4, features drawn once (redraw is opt-in, by a callback).
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from vitlab.errors import ConfigError
from vitlab.models.geometry import TokenGeometry
from vitlab.models.mixers.attention import AttentionKernel, at_least_fp32


def orthogonal_gaussian_features(
    nb_rows: int, dim: int, scaling: int = 0, generator: torch.Generator | None = None
) -> Tensor:
    """(nb_rows, dim) random projection whose rows are orthogonal within each block of `dim` rows.

    scaling=0: row norms distributed as those of Gaussian vectors (unbiased FAVOR+); 1: every norm √dim.
    """
    blocks = []
    for _ in range(math.ceil(nb_rows / dim)):
        q, _ = torch.linalg.qr(torch.randn(dim, dim, generator=generator))
        blocks.append(q.T)
    matrix = torch.cat(blocks)[:nb_rows]
    if scaling == 0:
        norms = torch.randn(nb_rows, dim, generator=generator).norm(dim=1)
    elif scaling == 1:
        norms = torch.full((nb_rows,), math.sqrt(dim))
    else:
        raise ConfigError(f"model.mixer.kernel.ortho_scaling={scaling} is not one of: 0, 1.")
    return norms[:, None] * matrix


class PerformerKernel(AttentionKernel):
    """Non-causal FAVOR+ with the softmax kernel; `projection_matrix` is a buffer (saved in checkpoints).

    A state dict without `projection_matrix` (e.g. a stock timm ViT) loads strictly: the features drawn at
    construction are kept, since they are random, not learned.
    """

    def __init__(
        self,
        geo: TokenGeometry,
        num_heads: int,
        head_dim: int,
        attn_drop: float = 0.0,
        nb_features: int | None = None,
        ortho_scaling: int = 0,
        kernel_eps: float = 1e-4,
        redraw_interval: int | None = None,
    ) -> None:
        super().__init__()
        self.head_dim = head_dim
        self.nb_features = int(nb_features or int(head_dim * math.log(head_dim)))
        if self.nb_features < 1:
            raise ConfigError(f"model.mixer.kernel.nb_features={nb_features} must be a positive integer.")
        self.ortho_scaling, self.kernel_eps = ortho_scaling, kernel_eps
        self.redraw_interval = redraw_interval  # read by vitlab.training.callbacks.RandomFeatureRedraw
        self.register_buffer(
            "projection_matrix", orthogonal_gaussian_features(self.nb_features, head_dim, ortho_scaling)
        )

    @torch.no_grad()
    def redraw(self, generator: torch.Generator | None = None) -> None:
        """Draw new random features (same generator state on every rank keeps DDP replicas identical)."""
        new = orthogonal_gaussian_features(self.nb_features, self.head_dim, self.ortho_scaling, generator)
        self.projection_matrix.copy_(new)

    def features(self, x: Tensor, is_query: bool) -> Tensor:
        """φ(x) for (B, H, N, D) -> (B, H, N, m)."""
        x = x * self.head_dim**-0.25
        proj = x @ self.projection_matrix.to(x.dtype).T
        half_sq_norm = x.square().sum(dim=-1, keepdim=True) / 2
        dims = (-1,) if is_query else (-1, -2)
        stabiliser = proj.amax(dim=dims, keepdim=True).detach()
        return self.nb_features**-0.5 * (torch.exp(proj - half_sq_norm - stabiliser) + self.kernel_eps)

    def forward(self, q: Tensor, k: Tensor, v: Tensor) -> Tensor:
        dtype = v.dtype
        with torch.autocast(device_type=q.device.type, enabled=False):  # exp of logits: keep fp32
            q, k, v = at_least_fp32(q, k, v)
            q_prime, k_prime = self.features(q, True), self.features(k, False)
            context = k_prime.transpose(-2, -1) @ v  # (B, H, m, D): the O(N m D) trick
            normaliser = q_prime @ k_prime.sum(dim=-2).unsqueeze(-1)  # D = φ(Q) φ(K)ᵀ 1
            return ((q_prime @ context) / normaliser).to(dtype)

    def _load_from_state_dict(self, state_dict, prefix, local_metadata, strict, missing_keys, *args, **kwargs):
        super()._load_from_state_dict(state_dict, prefix, local_metadata, strict, missing_keys, *args, **kwargs)
        key = prefix + "projection_matrix"
        if key in missing_keys:
            missing_keys.remove(key)  # random, not learned: keep the construction-time draw

    def extra_repr(self) -> str:
        return f"nb_features={self.nb_features}, redraw_interval={self.redraw_interval}"
