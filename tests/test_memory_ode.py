"""The memory-ODE head (docs/papers/ode.md): attractor, discretisation error, solvers, variants, constraints."""

from __future__ import annotations

import functools

import pytest
import torch
import torchdiffeq

from vitlab.errors import ConfigError
from vitlab.models.backbone import create_backbone
from vitlab.models.build import build_classifier
from vitlab.models.geometry import TokenGeometry
from vitlab.models.heads.memory_ode import MemoryODEField, MemoryODEHead
from vitlab.models.heads.ode_solvers import euler, integrate, rk4
from vitlab.models.summary import param_counts
from vitlab.training.constraints import modules_with, project_parameters

GEO = TokenGeometry(dim=16, num_heads=2, depth=2, grid_size=(2, 2), num_prefix_tokens=1)


def head(**kw) -> MemoryODEHead:
    torch.manual_seed(0)
    return MemoryODEHead(GEO, num_classes=5, **kw).double()


def gammas(batch: int = 8, width: int = 16) -> torch.Tensor:
    torch.manual_seed(1)
    return 2.0 * torch.randn(batch, width, dtype=torch.float64)


def nmode_rhs(y: torch.Tensor, gamma: torch.Tensor, a: torch.Tensor) -> torch.Tensor:
    return -a * y + torch.sin(y + gamma) ** 2  # the nmODE equation, written out


def test_long_horizon_reaches_the_attractor() -> None:
    m = head(T=40.0, steps=4000, solver="rk4")
    m.field.rho.data = torch.rand(16, dtype=torch.float64)  # a ∈ [1, 2): different time constants
    a, g = m.field.inhibition(), gammas()
    y = m.solve(g).double()
    assert (a * y - torch.sin(y + g) ** 2).abs().max() < 1e-4  # a⊙y* = sin²(y* + γ)
    assert ((y >= 0) & (y <= 1 / a + 1e-6)).all()  # y* ∈ [0, 1/a]


def test_euler_10_vs_40_steps_differ_only_by_first_order_discretisation_error() -> None:
    g = gammas()
    exact = head(solver="rk4", steps=2000).solve(g)
    e10, e40 = head(steps=10).solve(g), head(steps=40).solve(g)
    err10, err40 = (e10 - exact).abs().max(), (e40 - exact).abs().max()
    assert 3.0 < err10 / err40 < 5.0  # Euler is first order: 4x the steps, ~1/4 of the error
    assert (e10 - e40).abs().max() < 0.05
    rk10 = head(solver="rk4", steps=10).solve(g)
    assert (rk10 - e40).abs().max() < (e10 - e40).abs().max()  # RK4 at 10 steps beats Euler at 10
    assert (rk10 - exact).abs().max() < 1e-5


def test_hand_written_solvers_match_torchdiffeq() -> None:
    m, g = head(), gammas()
    state = torch.cat([torch.zeros_like(g), g], dim=1)
    t = torch.linspace(0, 1, 11, dtype=torch.float64)
    ref = torchdiffeq.odeint(lambda _t, s: m.field(s), state, t, method="euler")[-1]
    assert torch.allclose(euler(m.field, state, 1.0, 10), ref, atol=1e-12)
    tight = torchdiffeq.odeint(lambda _t, s: m.field(s), state, t[[0, -1]], method="dopri5", rtol=1e-10, atol=1e-12)
    assert torch.allclose(rk4(m.field, state, 1.0, 50), tight[-1], atol=1e-8)
    assert torch.allclose(head(solver="dopri5", rtol=1e-9, atol=1e-10).solve(g), tight[-1][:, :16], atol=1e-7)


def test_adjoint_gradients_equal_backprop_through_the_solver() -> None:
    tokens = torch.randn(4, 5, 16, dtype=torch.float64)
    grads = []
    for adjoint in (False, True):
        m = head(solver="dopri5", rtol=1e-9, atol=1e-10, adjoint=adjoint, out_init="trunc_normal")
        m.field.rho.data.uniform_(0, 1)
        m(tokens).square().sum().backward()
        grads.append({n: p.grad.clone() for n, p in m.named_parameters()})
    assert grads[0].keys() == grads[1].keys()
    for name in grads[0]:
        assert torch.allclose(grads[0][name], grads[1][name], atol=1e-6), name
    assert grads[1]["gamma.weight"].abs().sum() > 0  # the per-sample input γ gets its gradient through the state


def test_the_head_follows_the_unrolled_formula() -> None:
    m = head(out_init="trunc_normal", steps=10)
    tokens = torch.randn(3, 5, 16, dtype=torch.float64)
    g = m.gamma(tokens[:, 0])
    y, a = torch.zeros_like(g), torch.ones(16, dtype=torch.float64)
    for _ in range(10):  # docs/papers/ode.md#memory-ode-head
        y = y + 0.1 * nmode_rhs(y, g, a)
    assert torch.allclose(m(tokens), m.fc(y), atol=1e-12)
    avg = head(pool="avg", out_init="trunc_normal")
    assert torch.allclose(avg.drive(tokens), avg.gamma(tokens[:, 1:].mean(1)))


@pytest.mark.parametrize("variant", ["feedback", "adaptation"])
def test_ablation_variants_start_as_the_canonical_nmode_and_follow_their_equations(variant: str) -> None:
    g = gammas()
    canonical, m = head(), head(variant=variant)
    assert torch.allclose(m.solve(g), canonical.solve(g), atol=1e-12)
    y, w = torch.rand_like(g), torch.rand_like(g)
    if variant == "feedback":
        m.field.beta.data.fill_(0.5)
        state = torch.cat([y, g], 1)
        expected = -y + torch.sin(y + g - 0.5 * y) ** 2
        assert torch.allclose(m.field(state)[:, :16], expected)
    else:
        m.field.kappa.data.fill_(0.7)
        m.field.tau = 2.0
        state = torch.cat([y, w, g], 1)
        out = m.field(state)
        assert torch.allclose(out[:, :16], -y - w + torch.sin(y + g) ** 2)
        assert torch.allclose(out[:, 16:32], (-w + 0.7 * y) / 2.0)


def test_inhibition_options_and_their_constraints() -> None:
    per_neuron = MemoryODEField(4)
    assert torch.equal(per_neuron.inhibition(), torch.ones(4))  # a = 1 exactly at init: the canonical nmODE
    per_neuron.rho.data = torch.tensor([-0.5, 0.0, 0.3, 2.0])  # an optimiser step pushed one below the bound
    project_parameters(modules_with(per_neuron, "project_parameters_"))
    assert torch.allclose(per_neuron.inhibition(), torch.tensor([1.0, 1.0, 1.3, 3.0]))
    assert MemoryODEField(4, "shared").rho.shape == ()
    unconstrained = MemoryODEField(4, "unconstrained")
    assert torch.equal(unconstrained.inhibition(), torch.ones(4))
    unconstrained.rho.data.fill_(-20.0)
    assert (unconstrained.inhibition() > 0).all() and (unconstrained.inhibition() < 1).all()
    assert not list(MemoryODEField(4, "fixed").parameters())


def test_the_inhibition_learns_from_a_gradient_at_its_bound() -> None:
    m = head(out_init="trunc_normal")
    opt = torch.optim.SGD(m.parameters(), lr=1.0)
    m(torch.randn(4, 5, 16, dtype=torch.float64)).sum().backward()
    assert m.field.rho.grad.abs().sum() > 0  # a = 1 + ρ at ρ = 0 still has a gradient
    opt.step()
    project_parameters(modules_with(m, "project_parameters_"))
    a = m.inhibition()
    assert (a >= 1).all() and (a > 1).any()


def test_vit_b_head_parameter_count_matches_the_documented_formula() -> None:
    backbone = functools.partial(create_backbone, name="vit_base_patch16_224", img_size=224)
    model = build_classifier(backbone, num_classes=100, head=functools.partial(MemoryODEHead), freeze="backbone")
    head_params = 768 * 768 + 768 + 768 + 769 * 100  # W_γ, b_γ, a, W_o, b_o (docs/papers/ode.md#memory-ode-head)
    assert param_counts(model)["params/trainable"] == head_params == 668_260
    assert param_counts(model)["params/trainable_no_head"] == 0
    shared = MemoryODEHead(TokenGeometry(768, 12, 12, (14, 14), 1), 100, project=False, inhibition="shared")
    assert sum(p.numel() for p in shared.parameters()) == 1 + 769 * 100  # the "cheaper option" (W_γ = I)


def test_bf16_autocast_integrates_in_float32() -> None:
    """Under bf16 autocast only the two linear maps (W_γ, W_o) run in bf16: the ODE is integrated in float32, so
    y(T) equals, bit for bit, a float32 integration of the same (bf16) drive outside autocast. The logits then
    differ from a float32 forward only by bf16 rounding: relative error within 8 units of bf16 roundoff (2^-9;
    measured 0.004-0.007 on 5 seeds). The logits are ~1e-3 (W_o std 0.02), so the bound is relative."""
    torch.manual_seed(0)
    m = MemoryODEHead(GEO, num_classes=5, out_init="trunc_normal")
    tokens = torch.randn(8, 5, 16)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        gamma = m.drive(tokens)
        y = m.solve(gamma)
        logits = m(tokens)
    assert gamma.dtype == torch.bfloat16 and y.dtype == torch.float32 and logits.shape == (8, 5)
    assert torch.equal(y, m.solve(gamma.float())), "y(T) under autocast is not the float32 integration"
    reference = m(tokens)
    relative = ((logits.float() - reference).norm() / reference.norm()).item()
    assert relative <= 8 * 2**-9, f"bf16 logits differ from float32 by {relative:.3g} (relative)"


def test_bad_options_are_clear_errors() -> None:
    cases = [
        (dict(solver="leapfrog"), r"model.head.solver='leapfrog'.*euler, rk4, dopri5"),
        (dict(steps=0), "model.head.steps=0"),
        (dict(T=0.0), "model.head.T=0.0"),
        (dict(inhibition="global"), "model.head.inhibition='global'"),
        (dict(variant="gated"), "model.head.variant='gated'"),
        (dict(project=False, width=8), "model.head.project=false"),
        (dict(inhibition_init=0.5), "model.head.inhibition_init=0.5"),
        (dict(out_init="ones"), "model.head.out_init='ones'"),
    ]
    for kwargs, message in cases:
        with pytest.raises(ConfigError, match=message):
            MemoryODEHead(GEO, 5, **kwargs)
    with pytest.raises(ConfigError, match="class token"):
        MemoryODEHead(TokenGeometry(16, 2, 2, (2, 2), 0), 5)


def test_integrate_dispatches_to_the_fixed_grid_solvers() -> None:
    field = MemoryODEField(3)
    state = torch.cat([torch.zeros(2, 3), torch.ones(2, 3)], 1)
    assert torch.equal(integrate(field, state, 1.0, 5, "euler"), euler(field, state, 1.0, 5))
    assert torch.equal(integrate(field, state, 1.0, 5, "rk4"), rk4(field, state, 1.0, 5))
