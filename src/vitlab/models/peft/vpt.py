"""VPT-Deep (Jia et al., ECCV 2022): P learnable prompt tokens in front of the patch tokens of every block.

Block 0 receives [prefix (class token), P_0, patches]; before every later block the P positions are
replaced by that block's own prompts P_l (the previous prompts' outputs are discarded, VPT's "deep"
variant); after the last block they are removed, so the final norm and the head see the usual tokens.
Prompts start uniform in ±√(6 / (3·p² + D)) (VPT's Xavier init for patch size p), so unlike the other
methods VPT is not the identity at init. ViT-B/16, 10 prompts: 12·10·768 = 92,160 parameters.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from vitlab.models.classifier import Classifier
from vitlab.models.peft.common import require_stock_attention


class DeepPrompts(nn.Module):
    """The prompts of every block, (L, P, D), and the hooks that insert, replace and remove them."""

    def __init__(self, depth: int, num_tokens: int, dim: int, num_prefix: int, patch: int, dropout: float) -> None:
        super().__init__()
        bound = math.sqrt(6.0 / (3 * patch * patch + dim))
        self.prompts = nn.Parameter(torch.empty(depth, num_tokens, dim).uniform_(-bound, bound))
        self.num_prefix, self.drop = num_prefix, nn.Dropout(dropout)

    def prompt(self, layer: int, batch: int) -> Tensor:
        return self.drop(self.prompts[layer]).expand(batch, -1, -1)

    def insert(self, layer: int, x: Tensor) -> Tensor:
        """Block 0: put the prompts after the prefix tokens; later blocks: overwrite the previous prompts."""
        n, p = self.num_prefix, self.prompts.shape[1]
        rest = x[:, n:] if layer == 0 else x[:, n + p :]
        return torch.cat([x[:, :n], self.prompt(layer, x.shape[0]).to(x.dtype), rest], dim=1)

    def remove(self, x: Tensor) -> Tensor:
        n, p = self.num_prefix, self.prompts.shape[1]
        return torch.cat([x[:, :n], x[:, n + p :]], dim=1)


def vpt_deep(model: Classifier, num_tokens: int = 10, dropout: float = 0.0) -> Classifier:
    """Install `DeepPrompts` as `backbone.vpt_prompts` with forward hooks on every block."""
    require_stock_attention(
        model,
        "vpt_deep",
        "the prompts change the token count, which fixed-length and grid-based mixers or RoPE cannot take",
    )
    vit = model.backbone
    patch = getattr(getattr(vit, "patch_embed", None), "patch_size", (16, 16))
    patch = patch[0] if isinstance(patch, tuple | list) else int(patch)
    vpt = DeepPrompts(len(vit.blocks), num_tokens, vit.embed_dim, vit.num_prefix_tokens, patch, dropout)
    vit.vpt_prompts = vpt.to(next(vit.parameters()).device)
    for layer, block in enumerate(vit.blocks):

        def before(_block: nn.Module, args: tuple[Tensor, ...], layer: int = layer) -> tuple[Tensor, ...]:
            return (vpt.insert(layer, args[0]), *args[1:])

        block.register_forward_pre_hook(before)
    vit.blocks[-1].register_forward_hook(lambda _block, _args, out: vpt.remove(out))
    return model
