"""EIT's "decreasing convolution" (official `EIT_T`; docs/papers/eit.md): in block l of L, the normed tokens'
first c_l channels go through a depthwise 3×3 convolution over the patch grid, the other a_l through
multi-head attention of width a_l (own q/k/v and output projection); the outputs are concatenated.

    a_l = ⌊(D // h) · (l + 1) / L⌋ · h   (l < L − 1),   a_{L−1} = D,   c_l = D − a_l

so the convolution's share falls linearly to 0 (the last block is pure attention) while the head dimension
a_l / h grows. The class token's c_l conv channels pass through unchanged. The attention part takes any
q/k/v kernel (`model/mixer/kernel=nystrom|performer|linformer|softmax`): EIT with linear attention.
"""

from __future__ import annotations

import math

import torch
from timm.layers import trunc_normal_
from timm.models.vision_transformer import VisionTransformer
from torch import Tensor, nn

from vitlab.errors import ConfigError
from vitlab.models.geometry import TokenGeometry, geometry_of
from vitlab.models.mixers.attention import KernelFactory, QKVAttention


def attention_channels(dim: int, num_heads: int, depth: int, layer: int) -> int:
    """a_l of the official code (`int(D // h * (l + 1) / L) * h`, the last block all of D)."""
    if layer == depth - 1:
        return dim
    return int(dim // num_heads * (layer + 1) / depth) * num_heads


class DecreasingConvMixer(nn.Module):
    """[DWConv3×3(x[..., :c]) | MHSA(x[..., c:])] for the tokens of one block."""

    has_qk = False  # RoPE would rotate only part of the channels; not supported

    def __init__(
        self,
        geo: TokenGeometry,
        layer: int,
        kernel: KernelFactory,
        qkv_bias: bool = True,
        attn_drop: float = 0.0,
        proj_drop: float = 0.0,
        conv_kernel: int = 3,
    ) -> None:
        super().__init__()
        if geo.grid_size[0] != geo.grid_size[1]:
            raise ConfigError(
                f"model/mixer=eit convolves a square token grid, but this model's grid is {geo.grid_size}; use a "
                "square image (data.img_size) and a stem that keeps it square."
            )
        self.num_heads, self.num_prefix_tokens = geo.num_heads, geo.num_prefix_tokens
        self.attn_channels = attention_channels(geo.dim, geo.num_heads, geo.depth, layer)
        self.conv_channels = geo.dim - self.attn_channels
        if self.attn_channels < self.num_heads:
            raise ConfigError(
                f"model/mixer=eit: block {layer} would get {self.attn_channels} attention channels for "
                f"{self.num_heads} heads (embed_dim {geo.dim}); use embed_dim >= num_heads * depth."
            )
        head_dim = self.attn_channels // self.num_heads
        built = kernel(geo=geo, num_heads=self.num_heads, head_dim=head_dim, attn_drop=attn_drop)
        self.attn = QKVAttention(
            self.attn_channels, self.num_heads, built, head_dim=head_dim, qkv_bias=qkv_bias, proj_drop=proj_drop
        )
        self.conv = None
        if self.conv_channels:
            c = self.conv_channels
            self.conv = nn.Conv2d(c, c, conv_kernel, padding=conv_kernel // 2, groups=c, bias=False)
            self.conv_drop = nn.Dropout(attn_drop)  # the official code reuses the attention dropout rate

    def forward(self, x: Tensor, attn_mask: Tensor | None = None, is_causal: bool = False) -> Tensor:
        if attn_mask is not None or is_causal:
            raise ValueError("the EIT mixer takes no attention mask")
        c = self.conv_channels
        attended = self.attn(x[..., c:])
        if self.conv is None:
            return attended
        B, N, _ = x.shape
        p = self.num_prefix_tokens
        side = math.isqrt(N - p)
        if side * side != N - p:
            raise ValueError(f"EIT: {N - p} patch tokens do not form a square grid")
        grid = x[:, p:, :c].transpose(1, 2).reshape(B, c, side, side)
        convolved = self.conv_drop(self.conv(grid)).flatten(2).transpose(1, 2)
        conv_part = torch.cat((x[:, :p, :c], convolved), dim=1)  # prefix tokens' conv channels pass through
        return torch.cat((conv_part, attended), dim=-1)

    def extra_repr(self) -> str:
        return f"conv_channels={self.conv_channels}, attn_channels={self.attn_channels}"


def install_eit_mixer(
    vit: VisionTransformer, kernel: KernelFactory, conv_kernel: int = 3, official_init: bool = True
) -> VisionTransformer:
    """Give every block a `DecreasingConvMixer` (sizes, bias and dropouts read off the replaced attention).

    official_init: the EIT code's initialisation for the whole model — Linear trunc-normal(0.01) with zero
    bias, Conv2d Kaiming-normal (fan_out) with zero bias, LayerNorm (1, 0), class token trunc-normal(0.02).
    Pre-trained weights are loaded after the slots are installed, so it touches only what they do not provide.
    """
    geo = geometry_of(vit)
    for i, block in enumerate(vit.blocks):
        old = block.attn
        block.attn = DecreasingConvMixer(
            geo,
            i,
            kernel,
            qkv_bias=old.qkv.bias is not None,
            attn_drop=float(old.attn_drop.p),
            proj_drop=float(old.proj_drop.p),
            conv_kernel=conv_kernel,
        )
    if official_init:
        eit_init(vit)
    return vit


def eit_init(vit: VisionTransformer) -> None:
    """The official EIT initialisation, applied to the whole model (before any weights are loaded)."""
    for m in vit.modules():
        if isinstance(m, nn.Linear):
            trunc_normal_(m.weight, std=0.01)
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, mode="fan_out")
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.LayerNorm):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)
    if vit.cls_token is not None:
        trunc_normal_(vit.cls_token, std=0.02)
