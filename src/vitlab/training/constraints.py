"""Two hooks modules may offer to the training loop, found by duck typing (no registry):

- `regularization() -> Tensor | None`: a penalty added to the training loss (e.g. the step sizes' L2 pull
  towards 1, docs/papers/ode.md#learnable-euler-step-sizes);
- `project_parameters_() -> None`: a projection run after every optimiser step to keep a constrained
  parameter feasible (e.g. the memory-ODE head's self-inhibition a ≥ 1, docs/papers/ode.md#memory-ode-head).
"""

from __future__ import annotations

import torch
from torch import Tensor, nn


def modules_with(model: nn.Module, method: str) -> list[nn.Module]:
    return [m for m in model.modules() if callable(getattr(m, method, None))]


def regularization_loss(modules: list[nn.Module]) -> Tensor | None:
    """The sum of the modules' penalties, or None when every penalty is off."""
    terms = [t for m in modules if (t := m.regularization()) is not None]
    return torch.stack([t.float() for t in terms]).sum() if terms else None


@torch.no_grad()
def project_parameters(modules: list[nn.Module]) -> None:
    for module in modules:
        module.project_parameters_()
