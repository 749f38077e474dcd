"""Attention matrices read off a ViT, block by block: the softmax matrix, or the N×N matrix a linear mixer implies.

Every attention kernel mixes the values linearly once q and k are known, so each has an implied matrix A with
`kernel(q, k, v) = A v (+ R v)` (`AttentionKernel.implied_attention`; R is Nyström's residual convolution, a fixed
banded matrix kept apart). This module hooks each block's attention, captures its input tokens during one forward
pass, and recomputes q, k (after RoPE) and A from them, together with softmax(q kᵀ / √d) of the *same* q, k: the
matrix the linear mixer stands in for, so their distance is that model's approximation error (docs/attention.md).
FNet and MLP-Mixer mix tokens without such a matrix and say so (`no_attention_reason`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from timm.models.vision_transformer import Attention, VisionTransformer
from torch import Tensor, nn

from vitlab.models.geometry import geometry_of
from vitlab.models.mixers.attention import QKVAttention, at_least_fp32
from vitlab.models.mixers.eit import DecreasingConvMixer
from vitlab.models.mixers.install import attention_like, copy_projections
from vitlab.models.mixers.softmax import SoftmaxKernel


@dataclass(frozen=True)
class BlockAttention:
    """One block's matrices for a batch of images (fp32 at least)."""

    implied: Tensor  # (B, H, N, N): the mixer's attention (residual convolution excluded)
    softmax: Tensor  # (B, H, N, N): softmax(q kᵀ / √d) of the same q and k
    residual: Tensor | None  # (H, N, N): Nyström's residual convolution as a matrix, or None


@dataclass(frozen=True)
class ModelAttention:
    """Every block's attention for a batch, and how tokens map back to the image."""

    mixer: str  # softmax | nystrom | performer | linformer, `eit+<kernel>` for EIT's attention channels
    blocks: list[BlockAttention]
    num_prefix_tokens: int  # class and register tokens in front of the patch tokens
    has_class_token: bool
    grid: tuple[int, int]  # patch rows, columns

    @property
    def heads(self) -> int:
        return int(self.blocks[0].implied.shape[1])

    @property
    def tokens(self) -> int:
        return int(self.blocks[0].implied.shape[-1])


def backbone_of(model: nn.Module) -> VisionTransformer:
    """The timm ViT inside a vitlab `Classifier` (or the ViT itself)."""
    backbone = getattr(model, "backbone", model)
    if not isinstance(backbone, VisionTransformer):
        raise TypeError(f"expected a timm VisionTransformer, got {type(backbone).__name__}")
    return backbone


def no_attention_reason(backbone: VisionTransformer) -> str | None:
    """Why this model's blocks have no attention matrix (FNet, MLP-Mixer), or None when they all have one."""
    for i, block in enumerate(backbone.blocks):
        mixer = block.attn
        reason = getattr(mixer, "no_attention_matrix", None)
        if reason is not None:
            return str(reason)
        if not isinstance(mixer, Attention | QKVAttention | DecreasingConvMixer):
            return f"blocks[{i}].attn is a {type(mixer).__name__}, which mixes tokens without an attention matrix"
    return None


def attention_module(mixer: nn.Module) -> QKVAttention:
    """The `QKVAttention` whose matrix a block's mixer has: itself, EIT's attention channels, or for timm's own
    `Attention` an equivalent softmax `QKVAttention` with the same weights (built here, not installed)."""
    if isinstance(mixer, QKVAttention):
        return mixer
    if isinstance(mixer, DecreasingConvMixer):
        return mixer.attn
    if isinstance(mixer, Attention):
        converted = attention_like(mixer, None, SoftmaxKernel)  # type: ignore[arg-type]  (softmax needs no geometry)
        copy_projections(mixer, converted)
        return converted.to(next(mixer.parameters()).device).eval()
    raise TypeError(f"{type(mixer).__name__} has no attention matrix")


def kernel_name(mixer: nn.Module) -> str:
    """softmax | nystrom | performer | linformer (the kernel's class), `eit+<kernel>` for EIT."""
    if isinstance(mixer, Attention):
        return "softmax"
    name = type(attention_module(mixer).kernel).__name__.removesuffix("Kernel").lower()
    return f"eit+{name}" if isinstance(mixer, DecreasingConvMixer) else name


def _hooked_module(mixer: nn.Module) -> nn.Module:
    """The module whose input is the attention's input (EIT: its attention channels only)."""
    return mixer.attn if isinstance(mixer, DecreasingConvMixer) else mixer


@torch.no_grad()
def model_attention(model: nn.Module, images: Tensor) -> ModelAttention:
    """Run `model` on `images` (B, C, H, W) in eval mode and return every block's implied and softmax matrices.

    Raises `ValueError` with `no_attention_reason` for models without attention matrices.
    """
    backbone = backbone_of(model)
    reason = no_attention_reason(backbone)
    if reason is not None:
        raise ValueError(reason)
    inputs: dict[int, Tensor] = {}

    def capture(index: int) -> Any:
        def hook(module: nn.Module, args: tuple[Any, ...]) -> None:
            inputs[index] = args[0]

        return hook

    handles = [_hooked_module(b.attn).register_forward_pre_hook(capture(i)) for i, b in enumerate(backbone.blocks)]
    was_training = model.training
    try:
        model.eval()
        model(images)
    finally:
        for handle in handles:
            handle.remove()
        model.train(was_training)
    blocks = [block_attention(attention_module(b.attn), inputs[i]) for i, b in enumerate(backbone.blocks)]
    geo = geometry_of(backbone)
    n_patches = blocks[0].implied.shape[-1] - geo.num_prefix_tokens
    return ModelAttention(
        mixer=kernel_name(backbone.blocks[0].attn),
        blocks=blocks,
        num_prefix_tokens=geo.num_prefix_tokens,
        has_class_token=getattr(backbone, "cls_token", None) is not None,
        grid=geo.grid_size if n_patches == geo.num_patches else _square(n_patches),
    )


def block_attention(attn: QKVAttention, x: Tensor) -> BlockAttention:
    """The implied and the softmax matrix of one attention for its input tokens x (B, N, C)."""
    q, k = at_least_fp32(*attn.qkv_heads(x)[:2])
    implied = attn.kernel.implied_attention(q, k)
    exact = ((q * attn.head_dim**-0.5) @ k.transpose(-2, -1)).softmax(dim=-1)  # one_kv_head: k broadcasts
    residual = attn.kernel.residual_matrix(x.shape[1], implied.dtype, x.device)
    return BlockAttention(implied=implied, softmax=exact, residual=residual)


def _square(n: int) -> tuple[int, int]:
    side = round(n**0.5)
    if side * side != n:
        raise ValueError(f"{n} patch tokens do not form a square grid")
    return side, side


def token_maps(matrix: Tensor, num_prefix_tokens: int, has_class_token: bool, grid: tuple[int, int]) -> Tensor:
    """(…, N, N) attention -> (…, rows, cols): the class token's attention over the patch tokens (its row, the
    patch columns), or for a model without one the mean over the patch queries of their attention to each
    patch (how much each patch is attended to on average). Leading dims (batch, heads) are kept."""
    patches = matrix[..., num_prefix_tokens:]  # columns: the patch tokens as keys
    rows = patches[..., 0, :] if has_class_token else patches[..., num_prefix_tokens:, :].mean(dim=-2)
    return rows.unflatten(-1, grid)


def row_tv_distance(a: Tensor, b: Tensor) -> float:
    """Mean over rows (and every leading dim) of the total-variation distance ½ Σⱼ |aᵢⱼ − bᵢⱼ|: 0 for the same
    rows, 1 for distributions on disjoint tokens (more for rows with negative entries, e.g. Linformer's)."""
    return float(0.5 * (a - b).abs().sum(dim=-1).mean())


def relative_frobenius(a: Tensor, b: Tensor) -> float:
    """‖a − b‖_F / ‖b‖_F per (image, head) matrix, averaged."""
    return float(((a - b).norm(dim=(-2, -1)) / b.norm(dim=(-2, -1))).mean())


def row_entropy(matrix: Tensor) -> float | None:
    """Mean entropy (nats) of the rows, or None when the rows are not distributions (negative entries, or sums
    off 1 by more than 1e-3: Linformer, Nyström) and an entropy would mean nothing."""
    if bool((matrix < 0).any()) or float((matrix.sum(dim=-1) - 1).abs().max()) > 1e-3:
        return None
    return float(-(matrix * matrix.clamp_min(1e-30).log()).sum(dim=-1).mean())
