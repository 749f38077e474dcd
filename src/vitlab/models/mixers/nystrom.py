"""Nyström attention (Xiong et al. 2021, "Nyströmformer", eq. 15), as used by ViX:

    Ŝ V = softmax(Q K̃ᵀ) · pinv(softmax(Q̃ K̃ᵀ)) · softmax(Q̃ Kᵀ) · V  (+ depthwise conv of V along the sequence)

Q̃, K̃ are m landmarks: means of m contiguous segments of the sequence, which is front-padded to a multiple
of m (l = ⌈n/m⌉ tokens per segment, p = m·l − n pads). Two ways to treat the pads (`padding`):
- `masked` (ours, the default): excluded from the segment means and from every softmax, so they never change
  the output; equals lucidrains/nystrom-attention called with an all-true mask.
- `official` (the ViX code, and that package without a mask): zero queries/keys/values that count in the
  segment means (sum / l; at n = 1025, m = 64 the first three landmarks are zero vectors) and whose zero
  logits take part in the softmaxes over landmarks and over keys.
Both are the same function when m divides n. The pseudo-inverse is the iterative Moore–Penrose scheme of
Razavi et al. (2014, eq. 16). docs/papers/vix-code-parity.md compares both with the code.
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
Padding = Literal["masked", "official"]


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
        padding: Padding = "masked",
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
        if padding not in ("masked", "official"):
            raise ConfigError(
                f"model.mixer.kernel.padding={padding!r} is not one of: masked (pads excluded, ours), official "
                "(the ViX code's zero pads in the landmark means and softmaxes)."
            )
        self.num_landmarks, self.pinv_iterations, self.pinv_init = num_landmarks, pinv_iterations, pinv_init
        self.padding = padding
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
            out = self._attend(q, k, v)
        return out.to(dtype)

    def rope_offset(self, n: int) -> int:
        """The ViX code rotates after padding: its real tokens sit at positions p..p+n−1 of the table."""
        return self._pad(n) if self.padding == "official" else 0

    def _pad(self, n: int) -> int:
        return self.num_landmarks * math.ceil(n / self.num_landmarks) - n

    def _attend(self, q: Tensor, k: Tensor, v: Tensor) -> Tensor:
        n, pad = q.shape[-2], self._pad(q.shape[-2])  # front padding, as in ViX / lucidrains
        # q, k, v arrive as per-head views of the (B, n, H·D) projections; every product below would copy
        # them again (forward and backward), so lay them out per head once
        q, k, v = q.contiguous(), k.contiguous(), v.contiguous()
        kernel_1, kernel_2, kernel_3, empty = self._kernels(q, k)
        values = kernel_3 @ v
        if empty is not None:
            # a fully masked row is uniform over all n + pad positions, whose padded values are zero
            values = torch.where(empty[:, None], v.sum(dim=-2, keepdim=True) / (n + pad), values)
        out = kernel_1 @ (iterative_pinv(kernel_2, self.pinv_iterations, self.pinv_init) @ values)
        if self.res_conv is not None:
            out = out + self._residual(v)  # zero 'same' padding = the code's zero pads in front
        return out

    def implied_attention(self, q: Tensor, k: Tensor) -> Tensor:
        """softmax(QK̃ᵀ) · pinv(softmax(Q̃K̃ᵀ)) · softmax(Q̃Kᵀ): the (n, n) matrix of the real tokens, with forward's
        pinv iterations and padding (pads never get a row or column: their values are zero, so they add nothing;
        a masked empty landmark's row of the last factor is 1 / (n + pad)). The residual convolution is not part
        of it: `residual_matrix`. Rows sum to 1 only as far as the pinv inverts softmax(Q̃K̃ᵀ) (row-stochastic,
        so its inverse maps 1 to 1), and only with `padding: masked` or no padding."""
        n, pad = q.shape[-2], self._pad(q.shape[-2])
        with torch.autocast(device_type=q.device.type, enabled=False):
            q, k = at_least_fp32(q.contiguous(), k.contiguous())
            kernel_1, kernel_2, kernel_3, empty = self._kernels(q, k)
            if empty is not None:
                kernel_3 = torch.where(empty[:, None], kernel_3.new_tensor(1 / (n + pad)), kernel_3)
            return kernel_1 @ (iterative_pinv(kernel_2, self.pinv_iterations, self.pinv_init) @ kernel_3)

    def residual_matrix(self, n: int, dtype: torch.dtype, device: torch.device) -> Tensor | None:
        """(H, n, n) banded Toeplitz matrices R with R v = `res_conv(v)`: R[h, i, j] = w_h[j − i + K // 2]."""
        if self.res_conv is None:
            return None
        weight = self.res_conv.weight[:, 0, :, 0].to(device, dtype)  # (H, K)
        size, half = weight.shape[-1], self.res_conv.padding[0]
        offset = torch.arange(n, device=device)[None, :] - torch.arange(n, device=device)[:, None] + half
        inside = (offset >= 0) & (offset < size)
        return torch.where(inside, weight[:, offset.clamp(0, size - 1)], weight.new_zeros(()))

    def _kernels(self, q: Tensor, k: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor | None]:
        """(softmax(QK̃ᵀ), softmax(Q̃K̃ᵀ), softmax(Q̃Kᵀ), which landmarks are whole segments of masked pads)."""
        n, m = q.shape[-2], self.num_landmarks
        seg, pad = math.ceil(n / m), self._pad(n)
        if pad and self.padding == "official":
            return (*self._official_kernels(q, k, m, seg, pad), None)
        return self._masked_kernels(q, k, m, seg, pad)

    def _masked_kernels(self, q: Tensor, k: Tensor, m: int, seg: int, pad: int) -> tuple[Tensor, ...]:
        """(softmax(QK̃ᵀ), softmax(Q̃K̃ᵀ), softmax(Q̃Kᵀ), empty) with the pads masked out."""
        n = q.shape[-2]
        counts = self._segment_counts(n, m, seg, pad, q.device)  # real tokens per segment
        divisor = counts[:, None] + self.eps if pad else seg
        q_land, k_land = self._landmarks(q, k, m, seg, pad, divisor)
        empty = counts == 0 if pad >= seg else None  # whole segments of padding (masked landmarks)

        sim1 = q @ (k_land * self.scale).transpose(-1, -2)  # (.., n, m): padded query rows are never computed
        sim2 = q_land @ k_land.transpose(-1, -2)  # (.., m, m)
        sim3 = q_land @ k.transpose(-1, -2)  # (.., m, n): padded key columns would get weight 0
        if empty is not None:
            big = -torch.finfo(q.dtype).max
            sim1 = sim1.masked_fill(empty, big)
            sim2 = sim2.masked_fill(empty[:, None] | empty[None, :], big)
        return sim1.softmax(-1), sim2.softmax(-1), sim3.softmax(-1), empty

    def _official_kernels(self, q: Tensor, k: Tensor, m: int, seg: int, pad: int) -> tuple[Tensor, ...]:
        """The same three kernels as the ViX code computes them on its zero-padded sequence.

        Pads are zero vectors: they add nothing to the segment sums, which are divided by the full l; each has
        logit 0 against every landmark, so softmax(Q̃Kᵀ) over n + p keys is exp(s) / (Σ exp(s) + p), taken in
        log space; their zero values add nothing to softmax(Q̃Kᵀ)V, whose real columns are kept (rows sum to less
        than 1). The pads' own query rows are dropped by the code (it keeps the last n outputs) and are never
        computed here."""
        q_land, k_land = self._landmarks(q, k, m, seg, pad, seg)
        sim3 = q_land @ k.transpose(-1, -2)  # (.., m, n) real keys only
        log_norm = torch.logaddexp(sim3.logsumexp(dim=-1, keepdim=True), sim3.new_tensor(math.log(pad)))
        kernel_1 = (q @ (k_land * self.scale).transpose(-1, -2)).softmax(-1)
        return kernel_1, (q_land @ k_land.transpose(-1, -2)).softmax(-1), (sim3 - log_norm).exp()

    def _residual(self, v: Tensor) -> Tensor:
        """`res_conv(v)`: the ViX code's (K, 1) convolution over each head's (n, D) plane, with the batch folded
        into the groups: (1, B·H, n, D) is a view of the per-head layout, so no transposed copies of v or of the
        result are made, and each plane's weight gradient is its own (their sum over the batch is B·H·K
        numbers). Its zero 'same' padding stands for the code's zero pads in front."""
        B, H, n, D = v.shape
        weight = self.res_conv.weight.to(v.dtype).repeat(B, 1, 1, 1)  # (B·H, 1, K, 1)
        y = F.conv2d(v.reshape(1, B * H, n, D), weight, padding=self.res_conv.padding, groups=B * H)
        return y.view(B, H, n, D)

    def _landmarks(
        self, q: Tensor, k: Tensor, m: int, seg: int, pad: int, divisor: Tensor | int
    ) -> tuple[Tensor, Tensor]:
        """(Q̃ / √d, K̃): segment means with the softmax scale applied to the m query landmarks (q·k̃/√d =
        q·(k̃/√d), so the n queries are never scaled)."""
        return _segment_sums(q, m, seg, pad) * (self.scale / divisor), _segment_sums(k, m, seg, pad) / divisor

    @staticmethod
    def _segment_counts(n: int, m: int, seg: int, pad: int, device: torch.device) -> Tensor:
        starts = torch.arange(m, device=device) * seg
        return ((starts + seg).clamp(min=pad) - starts.clamp(min=pad)).float()

    def extra_repr(self) -> str:
        return (
            f"num_landmarks={self.num_landmarks}, pinv_iterations={self.pinv_iterations}, "
            f"pinv_init={self.pinv_init}, padding={self.padding}"
        )


def _segment_sums(t: Tensor, m: int, seg: int, pad: int) -> Tensor:
    """Sums over the m segments of l = `seg` tokens of the sequence front-padded by `pad` zeros, without
    building the padded copy: `pad // l` empty segments, one segment holding the first l − pad % l tokens,
    then whole segments. (B, H, n, D) -> (B, H, m, D)."""
    empty, rem = divmod(pad, seg)
    first = seg - rem if rem else 0
    whole = m - empty - (1 if first else 0)
    parts = [t.new_zeros(*t.shape[:-2], empty, t.shape[-1])] if empty else []
    if first:
        parts.append(t[..., :first, :].sum(dim=-2, keepdim=True))
    parts.append(t[..., first:, :].unflatten(-2, (whole, seg)).sum(dim=-2))
    return torch.cat(parts, dim=-2) if len(parts) > 1 else parts[0]
