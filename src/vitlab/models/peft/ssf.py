"""SSF (Lian et al., NeurIPS 2022): scale and shift the features after every operation, y ← γ ⊙ y + β.

Following SSF's ViT: after the patch embedding, after `norm1`, `qkv`, `proj`, `norm2`, `fc1`, `fc2` of every
block (every `nn.Linear` and `nn.LayerNorm` inside a block) and after the final `norm`. γ = 1, β = 0 at init
(the identity; SSF itself draws γ ~ N(1, 0.02), β ~ N(0, 0.02): `init_std=0.02`). The scales can be merged
into the frozen weights after training, which is SSF's point. ViT-B/16: 12·2·8,448 + 2·2·768 = 205,824.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from vitlab.models.classifier import Classifier
from vitlab.models.peft.common import require_called


class ScaleShift(nn.Module):
    """γ ⊙ y + β over the last (channel) dimension."""

    def __init__(self, dim: int, init_std: float = 0.0) -> None:
        super().__init__()
        self.scale, self.shift = nn.Parameter(torch.ones(dim)), nn.Parameter(torch.zeros(dim))
        if init_std > 0:
            nn.init.normal_(self.scale, 1.0, init_std)
            nn.init.normal_(self.shift, 0.0, init_std)

    def forward(self, y: Tensor) -> Tensor:
        return y * self.scale + self.shift


def _scale_shift_output(module: nn.Module, _args: tuple[Tensor, ...], out: Tensor) -> Tensor:
    return module.ssf(out)


def _attach(module: nn.Module, dim: int, init_std: float, device: torch.device) -> None:
    module.ssf = ScaleShift(dim, init_std).to(device)
    module.register_forward_hook(_scale_shift_output)


def ssf(model: Classifier, init_std: float = 0.0) -> Classifier:
    """Attach a `ScaleShift` (`<module>.ssf`) to the patch embedding, every Linear/LayerNorm of the blocks
    and the final norm, applied by a forward hook."""
    require_called(model, "ssf", ("qkv", "proj"))
    vit = model.backbone
    device = next(vit.parameters()).device
    _attach(vit.patch_embed, vit.embed_dim, init_std, device)
    for block in vit.blocks:
        for module in list(block.modules()):
            if isinstance(module, nn.Linear):
                _attach(module, module.out_features, init_std, device)
            elif isinstance(module, nn.LayerNorm):
                _attach(module, module.normalized_shape[0], init_std, device)
    if isinstance(vit.norm, nn.LayerNorm):
        _attach(vit.norm, vit.embed_dim, init_std, device)
    return model
