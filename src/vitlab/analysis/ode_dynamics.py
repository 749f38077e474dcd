"""What the ODE-transfer parameters learned, read from a model as plain arrays (docs/papers/ode.md#ode-pictures).

- the static Euler step sizes h of every block's two residual branches (`model/step_size=scalar|channel`),
  with the value they started from (1 = the stock block);
- the memory-ODE head's state y(t) on its way from y(0) = 0 to y(T) for a few images (`model/head=memory_ode`),
  with the learned self-inhibition a.

`vitlab.plots.ode` draws them; `vitlab.training.ode_figures` decides when. Input-conditioned step sizes
(`model/step_size=dynamic`) have no value of their own (one per image), so they are not read here.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor, nn

from vitlab.models.adapters.step_size import EulerStep
from vitlab.models.heads.memory_ode import MemoryODEHead

BRANCHES = {"ls1": "attention", "ls2": "mlp"}  # timm's seam -> the Euler step it scales
_SEAM = re.compile(r"(?:^|\.)blocks\.(\d+)\.(ls1|ls2)$")


@dataclass
class BranchStepSizes:
    """The step size(s) of one Euler step: `values` has 1 entry (scalar) or D (per channel)."""

    name: str  # the module's name in the model, e.g. backbone.blocks.3.ls2
    block: int
    branch: str  # attention | mlp
    values: np.ndarray
    init: float


@dataclass
class MemoryTrajectory:
    """y(t) of the memory-ODE head for a few images: `states` (P, B, H) at `times` (P,); `inhibition` a (H,)."""

    times: np.ndarray
    states: np.ndarray
    inhibition: np.ndarray
    labels: np.ndarray | None = None


def step_sizes(model: nn.Module) -> list[BranchStepSizes]:
    """Every static step size of `model`, ordered by block then branch (attention first); [] without any."""
    found = []
    for name, module in model.named_modules():
        match = _SEAM.search(name)
        if isinstance(module, EulerStep) and match:
            values = module.step_size().detach().double().cpu().reshape(-1).numpy()
            found.append(BranchStepSizes(name, int(match[1]), BRANCHES[match[2]], values, module.init))
    return sorted(found, key=lambda s: (s.block, s.branch != "attention"))


def memory_head(model: nn.Module) -> MemoryODEHead | None:
    """The model's memory-ODE head, if it has one."""
    return next((m for m in model.modules() if isinstance(m, MemoryODEHead)), None)


@torch.no_grad()
def memory_trajectory(model: nn.Module, images: Tensor, labels: Tensor | None = None) -> MemoryTrajectory | None:
    """Run `model` on `images` (in eval mode, restored after) and integrate its memory-ODE head's state for
    them, recording every step; None when the model has no such head. The head's input is taken from the
    model's own forward (a pre-hook), so whatever the classifier does before the head is what is pictured."""
    head = memory_head(model)
    if head is None:
        return None
    captured: list[Tensor] = []
    hook = head.register_forward_pre_hook(lambda _module, args: captured.append(args[0]))
    was_training = model.training
    try:
        model.eval()
        device = next(model.parameters()).device
        model(images.to(device))
        times, states = head.trajectory(head.drive(captured[0]))
    finally:
        hook.remove()
        model.train(was_training)
    return MemoryTrajectory(
        times=times.double().cpu().numpy(),
        states=states.double().cpu().numpy(),
        inhibition=head.inhibition().double().cpu().numpy(),
        labels=None if labels is None else labels.cpu().numpy(),
    )
