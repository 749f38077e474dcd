"""Nyström attention (Xiong et al. 2021, "Nyströmformer", eq. 15), as used by ViX:

    Ŝ V = softmax(Q K̃ᵀ) · pinv(softmax(Q̃ K̃ᵀ)) · softmax(Q̃ Kᵀ) · V  (+ depthwise conv of V along the sequence)

Q̃, K̃ are m landmarks: means of m contiguous segments of the sequence, which is front-padded to a multiple
of m. The padded positions are masked (zero queries/keys/values, excluded from the segment means and from
every softmax), so they never change the output; this equals lucidrains/nystrom-attention called with an
all-true mask. The pseudo-inverse is the iterative Moore–Penrose scheme of Razavi et al. (2014, eq. 16).
"""

from __future__ import annotations

import math
from typing import Literal

import torch
from torch import Tensor, nn
from torch.nn import functional as F

from vitlab.errors import ConfigError
from vitlab.models.geometry import TokenGeometry
from vitlab.models.mixers.attention import AttentionKernel, at_least_fp32

PinvInit = Literal["matrix", "batch"]


def iterative_pinv(x: Tensor, iterations: int, init: PinvInit = "matrix") -> Tensor:
    """Moore–Penrose pseudo-inverse of each (m, m) matrix in `x` by `iterations` Newton-type steps.

    Z₀ = Xᵀ / (‖X‖₁ ‖X‖_∞);  Z ← ¼ Z (13I − XZ (15I − XZ (7I − XZ))).  init="batch" takes the norms'
    maximum over the whole batch (what the Nyströmformer and lucidrains code do: outputs then depend on the
    other samples in the batch); "matrix" scales each matrix by its own norms.
    """
    abs_x = x.abs()
    col, row = abs_x.sum(dim=-1), abs_x.sum(dim=-2)
    if init == "batch":
        scale = col.max() * row.max()
    else:
        scale = col.amax(dim=-1)[..., None, None] * row.amax(dim=-1)[..., None, None]
    z = x.transpose(-1, -2) / scale
    eye = torch.eye(x.shape[-1], device=x.device, dtype=x.dtype)
    for _ in range(iterations):
        xz = x @ z
        z = 0.25 * z @ (13 * eye - xz @ (15 * eye - xz @ (7 * eye - xz)))
    return z


class NystromKernel(AttentionKernel):
    """Nyström approximation of softmax attention with m landmarks: O(n·m) time and memory."""

    def __init__(
        self,
        geo: TokenGeometry,
        num_heads: int,
        head_dim: int,
        attn_drop: float = 0.0,
        num_landmarks: int = 64,
        pinv_iterations: int = 6,
        residual: bool = True,
        residual_kernel: int = 33,
        pinv_init: PinvInit = "matrix",
        eps: float = 1e-8,
    ) -> None:
        super().__init__()
        if num_landmarks < 1 or pinv_iterations < 1:
            raise ConfigError(
                f"model.mixer.kernel.num_landmarks={num_landmarks} and pinv_iterations={pinv_iterations} must be "
                "positive integers."
            )
        if pinv_init not in ("matrix", "batch"):
            raise ConfigError(f"model.mixer.kernel.pinv_init={pinv_init!r} is not one of: matrix, batch.")
        self.num_landmarks, self.pinv_iterations, self.pinv_init = num_landmarks, pinv_iterations, pinv_init
        self.scale, self.eps = head_dim**-0.5, eps
        # ViX: a per-head (kernel × 1) convolution of the values along the sequence, no bias
        self.res_conv = (
            nn.Conv2d(
                num_heads,
                num_heads,
                (residual_kernel, 1),
                padding=(residual_kernel // 2, 0),
                groups=num_heads,
                bias=False,
            )
            if residual
            else None
        )

    def forward(self, q: Tensor, k: Tensor, v: Tensor) -> Tensor:
        dtype = v.dtype
        with torch.autocast(device_type=q.device.type, enabled=False):  # pinv needs fp32
            q, k, v = at_least_fp32(q, k, v)
            out = self._attend(q * self.scale, k, v)
        return out.to(dtype)

    def _attend(self, q: Tensor, k: Tensor, v: Tensor) -> Tensor:
        n, m = q.shape[-2], self.num_landmarks
        seg = math.ceil(n / m)
        pad = m * seg - n  # front padding, as in ViX / lucidrains
        counts = self._segment_counts(n, m, seg, pad, q.device)  # real tokens per segment
        q_land, k_land = (self._landmarks(t, m, seg, pad, counts) for t in (q, k))
        empty = counts == 0 if pad >= seg else None  # whole segments of padding (masked landmarks)

        sim1 = q @ k_land.transpose(-1, -2)  # (.., n, m): padded query rows are never computed
        sim2 = q_land @ k_land.transpose(-1, -2)  # (.., m, m)
        sim3 = q_land @ k.transpose(-1, -2)  # (.., m, n): padded key columns would get weight 0
        if empty is not None:
            big = -torch.finfo(q.dtype).max
            sim1 = sim1.masked_fill(empty, big)
            sim2 = sim2.masked_fill(empty[:, None] | empty[None, :], big)
        kernel_1, kernel_2, kernel_3 = sim1.softmax(-1), sim2.softmax(-1), sim3.softmax(-1)
        values = kernel_3 @ v
        if empty is not None:
            # a fully masked row is uniform over all n + pad positions, whose padded values are zero
            values = torch.where(empty[:, None], v.sum(dim=-2, keepdim=True) / (n + pad), values)
        out = kernel_1 @ (iterative_pinv(kernel_2, self.pinv_iterations, self.pinv_init) @ values)
        if self.res_conv is not None:
            out = out + self._residual(v)
        return out

    def _residual(self, v: Tensor) -> Tensor:
        """`res_conv(v)`, computed as a 1-D depthwise convolution over (head, channel) pairs: the same result
        as the (K, 1) Conv2d of the ViX code (whose weight layout is kept), about 2x faster on CPU. Its zero
        'same' padding stands for the front padding's zero values."""
        B, H, n, D = v.shape
        weight = self.res_conv.weight[..., 0].repeat_interleave(D, dim=0)  # (H·D, 1, K)
        x = v.transpose(-1, -2).reshape(B, H * D, n)
        y = F.conv1d(x, weight.to(x.dtype), padding=self.res_conv.padding[0], groups=H * D)
        return y.reshape(B, H, D, n).transpose(-1, -2)

    def _landmarks(self, t: Tensor, m: int, seg: int, pad: int, counts: Tensor) -> Tensor:
        """Segment means over real tokens: (B, H, n, D) -> (B, H, m, D)."""
        t = F.pad(t, (0, 0, pad, 0)) if pad else t
        sums = t.unflatten(-2, (m, seg)).sum(dim=-2)
        divisor = counts[:, None] + self.eps if pad else seg
        return sums / divisor

    @staticmethod
    def _segment_counts(n: int, m: int, seg: int, pad: int, device: torch.device) -> Tensor:
        starts = torch.arange(m, device=device) * seg
        return ((starts + seg).clamp(min=pad) - starts.clamp(min=pad)).float()

    def extra_repr(self) -> str:
        return f"num_landmarks={self.num_landmarks}, pinv_iterations={self.pinv_iterations}, pinv_init={self.pinv_init}"
