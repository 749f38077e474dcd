"""The memory-ODE (nmODE) head with learnable self-inhibition (docs/papers/ode.md#memory-ode-head).

    γ = W_γ z + b_γ                          learning neurons (z: class token or mean patch token)
    y(0) = 0,  dy/dt = −a ⊙ y + sin²(y + γ)  memory neurons, t ∈ [0, T]; −a⊙y is the self-inhibition
    logits = W_o y(T) + b_o

With a ≥ 1 the Jacobian −a + sin(2(y + γ)) ≤ 0, so every neuron contracts to its attractor
a⊙y* = sin²(y* + γ): the nmODE "memory". Ablations (`variant`): `feedback` puts an inhibitory feedback
inside the nonlinearity, sin²(y + γ − β⊙y) with β ≥ 0; `adaptation` adds a second state w,
dy/dt = −a⊙y − w + sin²(y + γ), dw/dt = (−w + κ⊙y)/τ. Both reduce to the canonical form at initialisation.

Self-inhibition (`inhibition`): `per_neuron` a = 1 + ρ, ρ ∈ R^H kept ≥ 0 by projection after every
optimiser step (a = 1 at init with a working gradient, which a = 1 + softplus(ρ) cannot give: softplus
reaches 0 only at ρ = −∞, where its gradient vanishes); `shared` one such a for all neurons; `unconstrained`
a = softplus(ρ)/softplus(0) > 0 (a < 1 allowed: several equilibria, no contraction guarantee); `fixed` a = 1
(the canonical nmODE, nothing learned).
"""

from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from vitlab.errors import ConfigError
from vitlab.models.geometry import TokenGeometry
from vitlab.models.heads.linear import Pool, pool_tokens
from vitlab.models.heads.ode_solvers import FIXED_GRID, check_solver, integrate

INHIBITIONS = ("per_neuron", "shared", "unconstrained", "fixed")
VARIANTS = ("canonical", "feedback", "adaptation")


class MemoryODEField(nn.Module):
    """The right-hand side on the state [y | w (adaptation only) | γ]; γ rides along with dγ/dt = 0 so that
    every solver (and the adjoint method) sees the per-sample input as part of the state."""

    def __init__(
        self,
        width: int,
        inhibition: Literal["per_neuron", "shared", "unconstrained", "fixed"] = "per_neuron",
        inhibition_init: float = 1.0,
        variant: Literal["canonical", "feedback", "adaptation"] = "canonical",
        adaptation_tau: float = 1.0,
    ) -> None:
        super().__init__()
        if inhibition not in INHIBITIONS:
            allowed = ", ".join(INHIBITIONS)
            raise ConfigError(f"model.head.inhibition={inhibition!r} is not an option. Allowed: {allowed}.")
        if variant not in VARIANTS:
            raise ConfigError(f"model.head.variant={variant!r} is not an option. Allowed: {', '.join(VARIANTS)}.")
        if inhibition in ("per_neuron", "shared") and inhibition_init < 1:
            raise ConfigError(f"model.head.inhibition_init={inhibition_init} must be >= 1 for inhibition={inhibition}.")
        if adaptation_tau <= 0:
            raise ConfigError(f"model.head.adaptation_tau={adaptation_tau} must be positive.")
        self.width, self.inhibition_kind, self.variant, self.tau = width, inhibition, variant, adaptation_tau
        self.inhibition_init = float(inhibition_init)
        if inhibition in ("per_neuron", "shared"):
            self.rho = nn.Parameter(torch.full((width,) if inhibition == "per_neuron" else (), inhibition_init - 1.0))
        elif inhibition == "unconstrained":
            self.rho = nn.Parameter(torch.zeros(width))
        if variant == "feedback":
            self.beta = nn.Parameter(torch.zeros(width))  # β ≥ 0 by projection; 0 = canonical
        if variant == "adaptation":
            self.kappa = nn.Parameter(torch.zeros(width))  # 0 = w stays 0 = canonical

    @property
    def state_width(self) -> int:
        return self.width * (3 if self.variant == "adaptation" else 2)

    def inhibition(self) -> Tensor:
        """a, broadcastable to (H,)."""
        if self.inhibition_kind == "fixed":
            return torch.ones(())
        if self.inhibition_kind == "unconstrained":
            return self.inhibition_init * F.softplus(self.rho) / F.softplus(torch.zeros_like(self.rho))
        return 1.0 + self.rho

    def forward(self, state: Tensor) -> Tensor:
        h = self.width
        y, gamma = state[:, :h], state[:, -h:]
        a = self.inhibition().to(state)
        drive = gamma - self.beta * y if self.variant == "feedback" else gamma
        dy = -a * y + torch.sin(y + drive).pow(2)
        parts = [dy]
        if self.variant == "adaptation":
            w = state[:, h : 2 * h]
            parts = [dy - w, (self.kappa * y - w) / self.tau]
        return torch.cat([*parts, torch.zeros_like(gamma)], dim=1)

    @torch.no_grad()
    def project_parameters_(self) -> None:
        """Keep a ≥ 1 (ρ ≥ 0) and β ≥ 0 after an optimiser step (projected gradient descent)."""
        if self.inhibition_kind in ("per_neuron", "shared"):
            self.rho.clamp_(min=0.0)
        if self.variant == "feedback":
            self.beta.clamp_(min=0.0)


class MemoryODEHead(nn.Module):
    """Pool the tokens, map them to γ, integrate the memory ODE from y(0) = 0 to T, classify y(T).

    Args:
        geo, num_classes: from the backbone and the data module.
        width: H, memory neurons (default D). With `project=false`, γ = z and H must equal D.
        T, steps, solver: horizon, fixed-grid steps (`euler` default, `rk4`), or a torchdiffeq adaptive
            solver (`dopri5`, ...; with `rtol`/`atol`, and `adjoint=true` for O(1) memory).
        pool: `token` (class token) or `avg` (mean of the patch tokens).
        inhibition, inhibition_init, variant, adaptation_tau: see the module docstring.
        gamma_norm: LayerNorm on γ. out_init: `zeros` or `trunc_normal` (std 0.02) for W_o.
    """

    def __init__(
        self,
        geo: TokenGeometry,
        num_classes: int,
        width: int | None = None,
        T: float = 1.0,  # the paper's symbol
        steps: int = 10,
        solver: str = "euler",
        pool: Pool = "token",
        inhibition: Literal["per_neuron", "shared", "unconstrained", "fixed"] = "per_neuron",
        inhibition_init: float = 1.0,
        variant: Literal["canonical", "feedback", "adaptation"] = "canonical",
        adaptation_tau: float = 1.0,
        project: bool = True,
        gamma_norm: bool = False,
        out_init: Literal["zeros", "trunc_normal"] = "zeros",
        drop_rate: float = 0.0,
        rtol: float = 1e-5,
        atol: float = 1e-6,
        adjoint: bool = False,
    ) -> None:
        super().__init__()
        check_solver(solver, steps, T)
        width = int(width or geo.dim)
        if pool == "token" and geo.num_prefix_tokens == 0:
            raise ConfigError("model.head.pool='token' needs a class token; this backbone has none. Use 'avg'.")
        if not project and width != geo.dim:
            raise ConfigError(f"model.head.project=false uses γ = z, so model.head.width must be {geo.dim} (or null).")
        if out_init not in ("zeros", "trunc_normal"):
            raise ConfigError(f"model.head.out_init={out_init!r} is not an option. Allowed: zeros, trunc_normal.")
        self.pool, self.num_prefix_tokens = pool, geo.num_prefix_tokens
        self.horizon, self.steps, self.solver = float(T), int(steps), solver
        self.rtol, self.atol, self.adjoint = rtol, atol, adjoint
        self.gamma = nn.Linear(geo.dim, width) if project else nn.Identity()
        if project:
            nn.init.trunc_normal_(self.gamma.weight, std=0.02)
            nn.init.zeros_(self.gamma.bias)
        self.gamma_norm = nn.LayerNorm(width) if gamma_norm else nn.Identity()
        self.field = MemoryODEField(width, inhibition, inhibition_init, variant, adaptation_tau)
        self.drop = nn.Dropout(drop_rate)
        self.fc = nn.Linear(width, num_classes)
        if out_init == "zeros":
            nn.init.zeros_(self.fc.weight)
        else:
            nn.init.trunc_normal_(self.fc.weight, std=0.02)
        nn.init.zeros_(self.fc.bias)

    def drive(self, tokens: Tensor) -> Tensor:
        """γ (B, H) for a token sequence (B, N, D)."""
        return self.gamma_norm(self.gamma(pool_tokens(tokens, self.pool, self.num_prefix_tokens)))

    def solve(self, gamma: Tensor) -> Tensor:
        """y(T) (B, H) for inputs γ (B, H), in float32 even under autocast (sin² of a sum is precision-sensitive)."""
        with torch.autocast(device_type=gamma.device.type, enabled=False):
            gamma = gamma.float() if gamma.dtype in (torch.float16, torch.bfloat16) else gamma
            width = self.field.width
            state = torch.cat([gamma.new_zeros(gamma.shape[0], self.field.state_width - width), gamma], dim=1)
            final = integrate(
                self.field, state, self.horizon, self.steps, self.solver, self.rtol, self.atol, self.adjoint
            )
            return final[:, :width]

    def forward(self, tokens: Tensor) -> Tensor:
        return self.fc(self.drop(self.solve(self.drive(tokens))))

    def trajectory(self, gamma: Tensor, points: int = 21) -> tuple[Tensor, Tensor]:
        """(times (P,), states y(t) (P, B, H)) from t = 0 to T for inputs γ (B, H): the pictures of the memory.

        A fixed-grid solver is stepped one step at a time with the same Δt = T/steps that `solve` uses, so the
        last state is `solve(gamma)` bit for bit and P = steps + 1 (`points` is ignored). An adaptive solver
        reports torchdiffeq's solution at `points` equally spaced times (its last one is y(T) within rtol/atol).
        `solve` itself is untouched: training never pays for the recording.
        """
        with torch.autocast(device_type=gamma.device.type, enabled=False):
            gamma = gamma.float() if gamma.dtype in (torch.float16, torch.bfloat16) else gamma
            width = self.field.width
            state = torch.cat([gamma.new_zeros(gamma.shape[0], self.field.state_width - width), gamma], dim=1)
            if self.solver in FIXED_GRID:
                dt, states = self.horizon / self.steps, [state]
                for _ in range(self.steps):
                    states.append(integrate(self.field, states[-1], dt, 1, self.solver))
                times = torch.arange(self.steps + 1, dtype=torch.float64) * dt
                return times, torch.stack(states)[..., :width]
            import torchdiffeq

            times = torch.linspace(0.0, self.horizon, max(int(points), 2), dtype=state.dtype, device=state.device)
            path = torchdiffeq.odeint(lambda t, y: self.field(y), state, times, method=self.solver, rtol=self.rtol,
                                      atol=self.atol)  # fmt: skip
            return times.double().cpu(), path[..., :width]

    def inhibition(self) -> Tensor:
        """The learned a per memory neuron (H,), detached, for logging its distribution."""
        return self.field.inhibition().detach().float().expand(self.field.width)

    def no_weight_decay(self) -> set[str]:
        return {"field.rho", "field.beta", "field.kappa"}  # constrained or initialised-at-0 dynamics parameters
