"""Attention rollout (Abnar & Zuidema 2020, "Quantifying Attention Flow in Transformers", eq. 1).

The residual connection carries each token's own state past every attention layer, so each block's mixing is
modelled as Â = normalise(Ā + I): Ā the attention averaged over heads, I the residual, rows renormalised to sum
to 1. Rolling out through the blocks multiplies them, later blocks on the left: R = Â_L ⋯ Â_2 Â_1, so R[i, j] is
how much of input token j reaches token i at the last block. For row-stochastic Ā, Â = ½Ā + ½I.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor


def residual_attention(matrix: Tensor) -> Tensor:
    """(B, H, N, N) or (B, N, N) -> (B, N, N): heads averaged, identity added, rows renormalised to sum to 1.

    For implied matrices whose rows do not sum to 1 (Linformer, Nyström) the renormalisation divides by their own
    sum plus one; a row summing to ≤ 0 cannot be renormalised and is refused (`ValueError`)."""
    mean = matrix.mean(dim=1) if matrix.dim() == 4 else matrix
    with_residual = mean + torch.eye(mean.shape[-1], dtype=mean.dtype, device=mean.device)
    sums = with_residual.sum(dim=-1, keepdim=True)
    if bool((sums <= 0).any()):
        raise ValueError("attention rollout: a row of (attention + identity) sums to <= 0 and cannot be normalised")
    return with_residual / sums


def attention_rollout(matrices: Sequence[Tensor]) -> Tensor:
    """The rollout (B, N, N) of the blocks' attention matrices, first block first."""
    if not matrices:
        raise ValueError("attention rollout needs at least one block")
    rollout = residual_attention(matrices[0])
    for matrix in matrices[1:]:
        rollout = residual_attention(matrix) @ rollout
    return rollout
