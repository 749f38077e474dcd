"""Integrate dy/dt = f(y) from t = 0 to T: fixed-grid Euler and RK4 by hand (unrolled, backpropagated), and
torchdiffeq's adaptive solvers (optionally with the adjoint method) for users who want error control.

The vector fields of the memory-ODE head are autonomous (no explicit t), which keeps the fixed-grid loops
to a few lines; torchdiffeq is imported only when asked for.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor, nn

from vitlab.errors import ConfigError
from vitlab.extras import require

FIXED_GRID = ("euler", "rk4")
ADAPTIVE = ("dopri5", "dopri8", "bosh3", "adaptive_heun", "fehlberg2")
SOLVERS = FIXED_GRID + ADAPTIVE


def check_solver(solver: str, steps: int, horizon: float) -> None:
    if solver not in SOLVERS:
        raise ConfigError(f"model.head.solver={solver!r} is not an option. Allowed: {', '.join(SOLVERS)}.")
    if solver in FIXED_GRID and steps < 1:
        raise ConfigError(f"model.head.steps={steps} must be >= 1 for the fixed-grid solver {solver}.")
    if horizon <= 0:
        raise ConfigError(f"model.head.T={horizon} must be positive (the integration horizon).")
    if solver not in FIXED_GRID:
        require("ode", f"model.head.solver={solver}")


def euler(f: Callable[[Tensor], Tensor], y0: Tensor, horizon: float, steps: int) -> Tensor:
    """K explicit Euler steps of size T/K: y ← y + Δt·f(y)."""
    dt, y = horizon / steps, y0
    for _ in range(steps):
        y = y + dt * f(y)
    return y


def rk4(f: Callable[[Tensor], Tensor], y0: Tensor, horizon: float, steps: int) -> Tensor:
    """K classic 4th-order Runge–Kutta steps of size T/K (local error O(Δt⁵) against Euler's O(Δt²))."""
    dt, y = horizon / steps, y0
    for _ in range(steps):
        k1 = f(y)
        k2 = f(y + 0.5 * dt * k1)
        k3 = f(y + 0.5 * dt * k2)
        k4 = f(y + dt * k3)
        y = y + (dt / 6.0) * (k1 + 2 * k2 + 2 * k3 + k4)
    return y


class _Autonomous(nn.Module):
    """torchdiffeq calls f(t, y); the adjoint method needs an nn.Module to collect parameters from."""

    def __init__(self, field: nn.Module) -> None:
        super().__init__()
        self.field = field

    def forward(self, t: Tensor, y: Tensor) -> Tensor:
        return self.field(y)


def integrate(
    field: nn.Module,
    y0: Tensor,
    horizon: float,
    steps: int,
    solver: str = "euler",
    rtol: float = 1e-5,
    atol: float = 1e-6,
    adjoint: bool = False,
) -> Tensor:
    """y(T) for dy/dt = field(y), y(0) = y0. Anything the field depends on per sample (the memory-ODE head's
    γ) must be part of the state, so that the adjoint method returns its gradient too."""
    if solver == "euler":
        return euler(field, y0, horizon, steps)
    if solver == "rk4":
        return rk4(field, y0, horizon, steps)
    import torchdiffeq

    odeint = torchdiffeq.odeint_adjoint if adjoint else torchdiffeq.odeint
    times = torch.tensor([0.0, horizon], dtype=y0.dtype, device=y0.device)
    return odeint(_Autonomous(field), y0, times, method=solver, rtol=rtol, atol=atol)[-1]
