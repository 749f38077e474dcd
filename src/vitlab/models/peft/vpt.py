"""VPT-Deep (Jia et al., ECCV 2022): P learnable prompt tokens in front of the patch tokens of every block.

Block 0 receives [prefix (class token), P_0, patches]; before every later block the P positions are
replaced by that block's own prompts P_l (the previous prompts' outputs are discarded, VPT's "deep"
variant); after the last block they are removed, so the final norm and the head see the usual tokens.
Prompts start uniform in ±√(6 / (3·p² + D)) (VPT's Xavier init for patch size p), so unlike the other
methods VPT is not the identity at init. ViT-B/16, 10 prompts: 12·10·768 = 92,160 parameters.

Each block owns its prompts (`blocks[l].vpt.prompts`, (P, D)): a tensor belongs to one block, so the
optimiser can give block l its own learning rate (`optim.layer_decay`, `vitlab.training.layer_decay`).
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from vitlab.models.classifier import Classifier
from vitlab.models.peft.common import require_stock_attention


class BlockPrompts(nn.Module):
    """The P prompts of one block, (P, D), and the hook bodies that insert or replace them."""

    def __init__(self, prompts: Tensor, num_prefix: int, first: bool, dropout: float) -> None:
        super().__init__()
        self.prompts = nn.Parameter(prompts)
        self.num_prefix, self.first, self.drop = num_prefix, first, nn.Dropout(dropout)

    def insert(self, x: Tensor) -> Tensor:
        """Block 0: put the prompts after the prefix tokens; later blocks: overwrite the previous prompts."""
        n, p = self.num_prefix, self.prompts.shape[0]
        rest = x[:, n:] if self.first else x[:, n + p :]
        prompts = self.drop(self.prompts).expand(x.shape[0], -1, -1).to(x.dtype)
        return torch.cat([x[:, :n], prompts, rest], dim=1)

    def remove(self, x: Tensor) -> Tensor:
        n, p = self.num_prefix, self.prompts.shape[0]
        return torch.cat([x[:, :n], x[:, n + p :]], dim=1)


def _insert(block: nn.Module, args: tuple[Tensor, ...]) -> tuple[Tensor, ...]:
    return (block.vpt.insert(args[0]), *args[1:])


def _remove(block: nn.Module, _args: tuple[Tensor, ...], out: Tensor) -> Tensor:
    return block.vpt.remove(out)


def _split_saved_prompts(module: nn.Module, state_dict: dict[str, Tensor], prefix: str, *_: object) -> None:
    """Load-state-dict pre-hook on the backbone: a checkpoint saved while VPT held every block's prompts in one
    (L, P, D) tensor (`vpt_prompts.prompts`) loads into the per-block prompts, row l into `blocks.l.vpt.prompts`."""
    stacked = state_dict.pop(f"{prefix}vpt_prompts.prompts", None)
    if stacked is not None:
        for layer in range(stacked.shape[0]):
            state_dict.setdefault(f"{prefix}blocks.{layer}.vpt.prompts", stacked[layer])


def vpt_deep(model: Classifier, num_tokens: int = 10, dropout: float = 0.0) -> Classifier:
    """Install a `BlockPrompts` as `blocks[l].vpt` of every block, with forward hooks that use it."""
    require_stock_attention(
        model,
        "vpt_deep",
        "the prompts change the token count, which fixed-length and grid-based mixers or RoPE cannot take",
    )
    vit = model.backbone
    patch = getattr(getattr(vit, "patch_embed", None), "patch_size", (16, 16))
    patch = patch[0] if isinstance(patch, tuple | list) else int(patch)
    bound = math.sqrt(6.0 / (3 * patch * patch + vit.embed_dim))
    # drawn as one (L, P, D) tensor: the same values as before the prompts were split per block, for a seed
    prompts = torch.empty(len(vit.blocks), num_tokens, vit.embed_dim).uniform_(-bound, bound)
    device = next(vit.parameters()).device
    for layer, block in enumerate(vit.blocks):
        block.vpt = BlockPrompts(prompts[layer].clone(), vit.num_prefix_tokens, layer == 0, dropout).to(device)
        block.register_forward_pre_hook(_insert)
    vit.blocks[-1].register_forward_hook(_remove)
    vit.register_load_state_dict_pre_hook(_split_saved_prompts)
    return model
