"""AdaptFormer (Chen et al., NeurIPS 2022): a bottleneck adapter parallel to every block's MLP.

    x_{l+1} = x' + MLP(LN x') + s · up(ReLU(down(x')))        (AdaptFormer eq. 2, `adapter_layernorm_option=none`)

The adapter reads the residual stream x' (the input of `norm2`) and its output is added after the MLP
branch's DropPath (at `drop_path2`), outside LayerScale or a step size. `up` starts at 0, so the model
starts as the pre-trained one. ViT-B/16, bottleneck 8: 12·(768·8 + 8 + 8·768 + 768) = 156,768 parameters.
"""

from __future__ import annotations

import math

from torch import Tensor, nn

from vitlab.models.classifier import Classifier


class ParallelAdapter(nn.Module):
    """s · up(dropout(ReLU(down(x)))), with AdaptFormer's init: down as LoRA's A, up and both biases 0."""

    def __init__(self, dim: int, bottleneck: int, scale: float, dropout: float) -> None:
        super().__init__()
        self.down, self.up = nn.Linear(dim, bottleneck), nn.Linear(bottleneck, dim)
        self.act, self.drop, self.scale = nn.ReLU(), nn.Dropout(dropout), float(scale)
        nn.init.kaiming_uniform_(self.down.weight, a=math.sqrt(5))
        for t in (self.down.bias, self.up.weight, self.up.bias):
            nn.init.zeros_(t)
        self.residual_input: Tensor | None = None  # set by the pre-hook on norm2, read by the hook on drop_path2

    def forward(self, x: Tensor) -> Tensor:
        return self.scale * self.up(self.drop(self.act(self.down(x))))


def adaptformer(model: Classifier, bottleneck: int = 8, scale: float = 0.1, dropout: float = 0.1) -> Classifier:
    """Install a `ParallelAdapter` (`blocks[i].adaptmlp`) beside the MLP of every block."""
    for block in model.backbone.blocks:
        dim = block.norm2.normalized_shape[0]
        adapter = ParallelAdapter(dim, bottleneck, scale, dropout).to(block.norm2.weight.device)
        block.adaptmlp = adapter

        def remember(_norm: nn.Module, args: tuple[Tensor, ...], adapter: ParallelAdapter = adapter) -> None:
            adapter.residual_input = args[0]

        def add(_drop: nn.Module, _args: tuple[Tensor, ...], out: Tensor, adapter: ParallelAdapter = adapter) -> Tensor:
            x, adapter.residual_input = adapter.residual_input, None  # drop the reference: no stale activations
            return out + adapter(x)

        block.norm2.register_forward_pre_hook(remember)
        block.drop_path2.register_forward_hook(add)
    return model
