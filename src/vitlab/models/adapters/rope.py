"""Rotary position embedding (RoPE; Su et al. 2021, eq. 34) for the `model/pos_embed` slot.

Rotating q and k by position-dependent angles makes q·k depend only on the offset between positions.
- `rope1d` (ViX): positions 0…N−1 over the flattened sequence, class token included, base 10000, channel
  pairs (2i, 2i+1) rotated by θᵢ = base^(−2i/d) (ViX's `rotate_every_two`).
- `rope2d` (axial): half the channels rotate with the patch row, half with the column; prefix tokens
  (class, registers) are not rotated.
The adapter removes timm's learned position embedding and installs the rotation in every block's mixer.
"""

from __future__ import annotations

from typing import Literal

import torch
from timm.models.vision_transformer import Attention, VisionTransformer
from torch import Tensor, nn

from vitlab.errors import ConfigError
from vitlab.models.adapters.pos_embed import remove_pos_embed
from vitlab.models.geometry import TokenGeometry, geometry_of
from vitlab.models.mixers.install import attention_like, copy_projections
from vitlab.models.mixers.softmax import SoftmaxKernel

RopeKind = Literal["1d", "2d"]
TableDtype = Literal["model", "float32"]


def rotate_pairs(x: Tensor) -> Tensor:
    """(x₀, x₁, x₂, x₃, …) -> (−x₁, x₀, −x₃, x₂, …): multiplication by i on each channel pair."""
    pairs = x.unflatten(-1, (-1, 2))
    return torch.stack((-pairs[..., 1], pairs[..., 0]), dim=-1).flatten(-2)


def pair_angles(positions: Tensor, channels: int, base: float, dtype: torch.dtype = torch.float32) -> Tensor:
    """(N,) positions -> (N, channels // 2) angles p·θᵢ, θᵢ = 1 / base^(2i / channels), one per channel pair.

    Written as the ViX code writes its table (`1 / base ** (arange / channels)`, then the outer product), so
    that in float32 the rounding is the code's too."""
    inv_freq = 1.0 / (base ** (torch.arange(0, channels, 2, dtype=dtype, device=positions.device) / channels))
    return positions.to(dtype)[:, None] * inv_freq


class Rotary(nn.Module):
    """Rotates (B, H, N, D) queries and keys; holds no parameters and no state-dict entries.

    table_dtype: `model` computes the angles and their sine/cosine in float64 for float64 inputs (float32
    otherwise); `float32` always in float32, then cast, as the ViX code does (its table is a float32 buffer:
    in a float64 model the rotation then carries float32 rounding, up to ~1e-5 in the angle at 1088 tokens).
    """

    def __init__(
        self,
        head_dim: int,
        geo: TokenGeometry,
        kind: RopeKind = "1d",
        base: float = 10000.0,
        table_dtype: TableDtype = "model",
    ) -> None:
        super().__init__()
        if head_dim % (2 if kind == "1d" else 4):
            raise ConfigError(
                f"model/pos_embed=rope{kind} needs a head dimension divisible by "
                f"{2 if kind == '1d' else 4}; this model's is {head_dim}."
            )
        if table_dtype not in ("model", "float32"):
            raise ConfigError(f"model.pos_embed.table_dtype={table_dtype!r} is not one of: model, float32.")
        self.head_dim, self.kind, self.base, self.table_dtype = head_dim, kind, base, table_dtype
        self.grid, self.num_prefix_tokens = geo.grid_size, geo.num_prefix_tokens

    def angles(self, n: int, device: torch.device, dtype: torch.dtype = torch.float32, offset: int = 0) -> Tensor:
        """(N, D / 2) rotation angle of every token and channel pair; 1d positions start at `offset`."""
        if self.kind == "1d":
            return pair_angles(torch.arange(offset, offset + n, device=device), self.head_dim, self.base, dtype)
        rows, cols = self._grid(n - self.num_prefix_tokens)
        r, c = torch.meshgrid(torch.arange(rows, device=device), torch.arange(cols, device=device), indexing="ij")
        half = self.head_dim // 2
        patch = torch.cat([pair_angles(t.flatten(), half, self.base, dtype) for t in (r, c)], dim=-1)
        prefix = patch.new_zeros(self.num_prefix_tokens, self.head_dim // 2)  # angle 0: not rotated
        return torch.cat((prefix, patch))

    def _grid(self, num_patches: int) -> tuple[int, int]:
        if num_patches == self.grid[0] * self.grid[1]:
            return self.grid
        side = round(num_patches**0.5)
        if side * side != num_patches:
            raise ValueError(f"rope2d: cannot infer a patch grid for {num_patches} tokens")
        return side, side  # dynamic image size with a square input

    def forward(self, q: Tensor, k: Tensor, offset: int = 0) -> tuple[Tensor, Tensor]:
        """Rotate q and k; `offset` shifts the 1d positions (a kernel that pads in front, as the ViX code's
        Nyström does before rotating, puts the real tokens at offset..offset+N−1)."""
        wide = q.dtype == torch.float64 and self.table_dtype == "model"
        theta = self.angles(q.shape[-2], q.device, torch.float64 if wide else torch.float32, offset)
        # sin/cos per channel pair, then repeated over the pair (the code's `repeat(..., j=2)`)
        cos, sin = (t.to(q.dtype).repeat_interleave(2, dim=-1) for t in (theta.cos(), theta.sin()))
        return q * cos + rotate_pairs(q) * sin, k * cos + rotate_pairs(k) * sin

    def extra_repr(self) -> str:
        return f"kind={self.kind}, head_dim={self.head_dim}, base={self.base}, table_dtype={self.table_dtype}"


def install_rope(
    vit: VisionTransformer, kind: RopeKind = "1d", base: float = 10000.0, table_dtype: TableDtype = "model"
) -> VisionTransformer:
    """Remove the learned position embedding and rotate q, k in every block's mixer.

    A stock timm `Attention` becomes an equivalent `QKVAttention` (softmax kernel, same weights) first.
    """
    if kind not in ("1d", "2d"):
        raise ConfigError(f"model.pos_embed.kind={kind!r} is not one of: 1d, 2d.")
    geo = geometry_of(vit)
    remove_pos_embed(vit)
    for i, block in enumerate(vit.blocks):
        attn = block.attn
        if isinstance(attn, Attention):
            new = attention_like(attn, geo, SoftmaxKernel)
            copy_projections(attn, new)
            block.attn = attn = new
        if not getattr(attn, "has_qk", False):
            raise ConfigError(
                f"model/pos_embed=rope{kind} rotates queries and keys, but blocks[{i}].attn is a "
                f"{type(attn).__name__}, which does not take RoPE (model/mixer=fnet, mlp_mixer or eit). Combine those "
                "mixers with model/pos_embed=learned or none, or choose an attention mixer (softmax, performer, "
                "linformer, nystrom)."
            )
        attn.rope = Rotary(attn.head_dim, geo, kind, base, table_dtype)
    return vit
