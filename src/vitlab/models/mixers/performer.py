"""Performer (FAVOR+) attention: softmax kernel approximated with positive orthogonal random features.

Choromanski et al. 2021, "Rethinking Attention with Performers", Lemma 1 / eq. (5):
    φ(x) = exp(wᵢᵀx − ‖x‖²/2) / √m  with orthogonal wᵢ,   Att(q, k, v) ≈ D⁻¹ φ(Q) (φ(K)ᵀ V),  D = diag(φ(Q) φ(K)ᵀ 1).
The data normaliser d^(-1/4) on q and k gives the 1/√d temperature; the max-subtraction is the usual
numerical stabiliser (per query row, and over all keys for K). Because ε is added after it, the stabiliser
changes the output slightly: `stabiliser=per_head` (ours) takes the keys' maximum per sample and head
(detached), so a sample's output does not depend on the rest of the batch; `batch` is the ViX code: one
maximum over the whole batch for the keys, and gradients flow through both maxima. Settings follow the
ViX code: m = ⌊d·ln d⌋ features, kernel ε = 1e-4, features drawn once (redraw is opt-in, by a callback).
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from vitlab.errors import ConfigError
from vitlab.models.geometry import TokenGeometry
from vitlab.models.mixers.attention import AttentionKernel, at_least_fp32

STABILISERS = ("per_head", "batch")


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


class _ExpFeatures(torch.autograd.Function):
    """φ = exp(proj + shift) + c, computed in place and saving only φ: the (B, H, N, m) feature tensors are
    the largest activations of FAVOR+, and autograd's exp/add chain would keep two of them per input."""

    @staticmethod
    def forward(ctx, proj: Tensor, shift: Tensor, c: float) -> Tensor:
        phi = (proj + shift).exp_().add_(c)
        ctx.save_for_backward(phi)
        ctx.c = c
        return phi

    @staticmethod
    def backward(ctx, grad: Tensor) -> tuple[Tensor, Tensor, None]:
        (phi,) = ctx.saved_tensors
        d_arg = (phi - ctx.c).mul_(grad)  # dφ/d(arg) = exp(arg) = φ − c
        return d_arg, d_arg.sum(dim=-1, keepdim=True), None


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
        stabiliser: str = "per_head",
    ) -> None:
        super().__init__()
        if stabiliser not in STABILISERS:
            raise ConfigError(
                f"model.mixer.kernel.stabiliser={stabiliser!r} is not one of: per_head (keys' maximum per sample "
                "and head, ours), batch (one maximum over the whole batch, the ViX code)."
            )
        self.stabiliser = stabiliser
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
        """φ(x) for (B, H, N, D) -> (B, H, N, m): ratio·(exp(wᵀx − ‖x‖²/2 − max) + ε), with the ratio m^(-1/2)
        folded into the exponent."""
        x = x * self.head_dim**-0.25
        proj = x @ self.projection_matrix.to(x.dtype).T
        if self.stabiliser == "batch":  # the ViX code: torch.max over everything for keys, not detached
            stabiliser = proj.amax(dim=-1, keepdim=True) if is_query else proj.amax()
        else:
            stabiliser = proj.detach().amax(dim=(-1,) if is_query else (-1, -2), keepdim=True)
        log_ratio = -0.5 * math.log(self.nb_features)
        shift = log_ratio - stabiliser - x.square().sum(dim=-1, keepdim=True) / 2  # (B, H, N, 1): cheap
        return _ExpFeatures.apply(proj, shift, self.kernel_eps * math.exp(log_ratio))

    def forward(self, q: Tensor, k: Tensor, v: Tensor) -> Tensor:
        dtype = v.dtype
        with torch.autocast(device_type=q.device.type, enabled=False):  # exp of logits: keep fp32
            q, k, v = at_least_fp32(q, k, v)
            q_prime, k_prime = self.features(q, True), self.features(k, False)
            # one product gives numerator and normaliser: φ(K)ᵀ [V | 1] -> (B, H, m, D + 1), computed as
            # ([V | 1]ᵀ φ(K))ᵀ so that the gradient reaching φ(K) is contiguous
            v_one = torch.cat((v, v.new_ones(*v.shape[:-1], 1)), dim=-1)
            context = (v_one.transpose(-2, -1) @ k_prime).transpose(-2, -1)
            out = q_prime @ context
            return (out[..., :-1] / out[..., -1:]).to(dtype)

    def implied_attention(self, q: Tensor, k: Tensor) -> Tensor:
        """D⁻¹ φ(Q) φ(K)ᵀ: the same features as forward (the keys' stabiliser is a maximum over these keys), each
        row divided by its sum, so rows sum to 1 and entries are positive."""
        with torch.autocast(device_type=q.device.type, enabled=False):
            q, k = at_least_fp32(q, k)
            scores = self.features(q, True) @ self.features(k, False).transpose(-2, -1)
            return scores / scores.sum(dim=-1, keepdim=True)

    def _load_from_state_dict(self, state_dict, prefix, local_metadata, strict, missing_keys, *args, **kwargs):
        super()._load_from_state_dict(state_dict, prefix, local_metadata, strict, missing_keys, *args, **kwargs)
        key = prefix + "projection_matrix"
        if key in missing_keys:
            missing_keys.remove(key)  # random, not learned: keep the construction-time draw

    def extra_repr(self) -> str:
        return f"nb_features={self.nb_features}, redraw_interval={self.redraw_interval}, stabiliser={self.stabiliser}"
