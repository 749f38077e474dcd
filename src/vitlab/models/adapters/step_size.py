"""Learnable Euler step sizes on the two residual branches of every block (docs/papers/ode.md).

A pre-LN ViT block is two explicit Euler steps of size 1 (Lie–Trotter split of one layer):

    X_{l+1/2} = X_l       + h_{l,A} ⊙ Attn(LN X_l)
    X_{l+1}   = X_{l+1/2} + h_{l,M} ⊙ MLP(LN X_{l+1/2})

timm computes `x + drop_path(ls(branch(norm(x))))`, so a module at the `ls1`/`ls2` seam that returns
`h ⊙ branch` *is* the step size. With h = 1 the model is the stock timm model, bit for bit.

Granularity (`kind`): `scalar` (one h per branch: 2·L parameters), `channel` (h ∈ R^D: 2·L·D) and
`dynamic` (input-conditioned, h = h0·(1 + tanh(wᵀ mean_tokens(X) + b)) with w = 0, b = 0 at init, where X is
the branch's input X_l or X_{l+1/2}: 2·L·(D + 1)).
"""

from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F
from timm.layers import LayerScale
from timm.models.vision_transformer import VisionTransformer
from torch import Tensor, nn

from vitlab.errors import ConfigError

Kind = Literal["scalar", "channel", "dynamic"]
KINDS = ("scalar", "channel", "dynamic")
SEAMS = (("ls1", "norm1"), ("ls2", "norm2"))  # (step-size seam, the norm whose input is the branch input X)


class EulerStep(nn.Module):
    """`h ⊙ F`: the step size of one Euler update `x + h·F(x)`.

    Args:
        dim: channels D of the residual stream.
        kind: `scalar` (h has shape ()) or `channel` (shape (D,)).
        init: h at initialisation (1 = the pre-trained network).
        init_std: optional noise, h = init + δ with δ ~ N(0, init_std) (the alternative start of docs/papers/ode.md).
        positive: reparameterise h = init·softplus(ρ)/softplus(ρ₀) so h stays > 0 and is exactly `init` at ρ = ρ₀.
        l2_to_init: weight λ of the penalty λ·Σ(h − init)², returned by `regularization()` and added to the loss.
        layer_scale: an existing LayerScale γ to compose with (h·(γ ⊙ F)); its tensor keeps the key `gamma`.
    """

    def __init__(
        self,
        dim: int,
        kind: Literal["scalar", "channel"] = "scalar",
        init: float = 1.0,
        init_std: float = 0.0,
        positive: bool = False,
        l2_to_init: float = 0.0,
        layer_scale: LayerScale | None = None,
    ) -> None:
        super().__init__()
        shape = () if kind == "scalar" else (dim,)
        self.init, self.positive, self.l2_to_init = float(init), positive, float(l2_to_init)
        start = torch.zeros(shape) if positive else torch.full(shape, self.init)
        if init_std > 0:
            start = start + init_std * torch.randn(shape)
        self.h_param = nn.Parameter(start)  # h itself, or ρ (ρ₀ = 0) when `positive`
        self.gamma = layer_scale.gamma if layer_scale is not None else None

    def step_size(self) -> Tensor:
        if not self.positive:
            return self.h_param
        rho = self.h_param
        return self.init * F.softplus(rho) / F.softplus(torch.zeros_like(rho))  # exactly `init` at ρ = 0

    def forward(self, branch: Tensor) -> Tensor:
        if self.gamma is not None:
            branch = branch * self.gamma
        return branch * self.step_size().to(branch.dtype)

    def regularization(self) -> Tensor | None:
        """The L2 pull of h towards its initial value (None when off)."""
        if self.l2_to_init <= 0:
            return None
        return self.l2_to_init * (self.step_size() - self.init).pow(2).sum()

    def no_weight_decay(self) -> set[str]:
        return {"h_param"}  # step sizes are never decayed towards 0 (that would switch a branch off)


class DynamicEulerStep(nn.Module):
    """An input-conditioned step size h(X) = h0·(1 + tanh(wᵀ mean_tokens(X) + b)) ∈ (0, 2·h0), one per image.

    X is the input of the branch (the residual stream before `norm1`/`norm2`); `observe` receives it from a
    forward pre-hook on that norm, so the state dict of the backbone is unchanged. With w = 0, b = 0 at
    initialisation h = h0 exactly.
    """

    def __init__(self, dim: int, init: float = 1.0, l2_to_init: float = 0.0) -> None:
        super().__init__()
        self.init, self.l2_to_init = float(init), float(l2_to_init)
        self.weight = nn.Parameter(torch.zeros(dim))
        self.bias = nn.Parameter(torch.zeros(()))
        self._context: Tensor | None = None

    def observe(self, module: nn.Module, args: tuple[Tensor, ...]) -> None:
        """Forward pre-hook on the branch's norm: remember the branch input X (B, N, D)."""
        self._context = args[0]

    def step_size(self, x: Tensor) -> Tensor:
        """(B,) step sizes for residual-stream tokens x (B, N, D)."""
        return self.init * (1 + torch.tanh(x.mean(dim=1) @ self.weight.to(x.dtype) + self.bias.to(x.dtype)))

    def forward(self, branch: Tensor) -> Tensor:
        if self._context is None:
            raise RuntimeError("DynamicEulerStep needs its branch input; install it with install_step_sizes().")
        h = self.step_size(self._context)
        self._context = None  # one use per forward: a stale input is never reused
        return branch * h.view(-1, *([1] * (branch.ndim - 1)))

    def regularization(self) -> Tensor | None:
        """Pulls h towards h0 by penalising the conditioning weights (None when off)."""
        if self.l2_to_init <= 0:
            return None
        return self.l2_to_init * (self.weight.pow(2).sum() + self.bias.pow(2))


def install_step_sizes(
    vit: VisionTransformer,
    kind: Kind = "scalar",
    init: float = 1.0,
    init_std: float = 0.0,
    positive: bool = False,
    l2_to_init: float = 0.0,
    compose_layer_scale: bool = False,
) -> VisionTransformer:
    """Put a step size at `blocks[i].ls1` and `blocks[i].ls2` of every block (the `model/step_size` slot).

    A backbone that already has LayerScale (`init_values` set, e.g. DeiT-III, CaiT-style ViTs) is refused
    unless `compose_layer_scale=true`, which keeps its γ and multiplies h after it (scalar/channel only).
    """
    if kind not in KINDS:
        raise ConfigError(f"model.step_size.kind={kind!r} is not an option. Allowed: {', '.join(KINDS)}.")
    if positive and kind == "dynamic":
        raise ConfigError("model.step_size.positive=true applies to kind scalar|channel; dynamic h is already > 0.")
    if init <= 0 and positive:
        raise ConfigError(f"model.step_size.init={init} must be positive with model.step_size.positive=true.")
    dim = int(vit.embed_dim)
    for i, block in enumerate(vit.blocks):
        for seam, norm in SEAMS:
            existing = getattr(block, seam)
            layer_scale = _existing_layer_scale(existing, i, seam, compose_layer_scale, kind)
            if kind == "dynamic":
                step: nn.Module = DynamicEulerStep(dim, init, l2_to_init)
                getattr(block, norm).register_forward_pre_hook(step.observe)
            else:
                step = EulerStep(dim, kind, init, init_std, positive, l2_to_init, layer_scale)
            setattr(block, seam, step)
    return vit


def _existing_layer_scale(existing: nn.Module, index: int, seam: str, compose: bool, kind: str) -> LayerScale | None:
    if isinstance(existing, nn.Identity):
        return None
    where = f"blocks[{index}].{seam} holds a {type(existing).__name__}"
    if not isinstance(existing, LayerScale):
        raise ConfigError(f"model/step_size: {where}, not timm's Identity or LayerScale; another slot already uses it.")
    if not compose:
        raise ConfigError(
            f"model/step_size: the backbone already has LayerScale ({where}). Set "
            "model.step_size.compose_layer_scale=true to learn h on top of its γ (h·γ⊙F), or use a backbone "
            "without LayerScale (model.backbone: init_values unset)."
        )
    if kind == "dynamic":
        raise ConfigError("model.step_size.compose_layer_scale=true works with kind scalar|channel, not dynamic.")
    return existing


def step_sizes(vit: VisionTransformer) -> dict[str, Tensor]:
    """The current static step sizes by seam name (`blocks.3.ls2` -> h), for logging and analysis."""
    return {
        f"blocks.{i}.{seam}": step.step_size().detach()
        for i, block in enumerate(vit.blocks)
        for seam, _ in SEAMS
        if isinstance(step := getattr(block, seam), EulerStep)
    }
