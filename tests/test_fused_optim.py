"""`optim.fused` (vitlab.training.optim_impl): torch's fused AdamW and SGD steps equal the for-loop steps,
`auto` picks fused only on CUDA, `true` is refused for an optimiser without a fused kernel, and the
implementation that ran is named."""

from __future__ import annotations

import functools

import pytest
import torch

from vitlab.errors import ConfigError
from vitlab.models.backbone import create_backbone
from vitlab.models.build import build_classifier
from vitlab.training.optim import build_optimizer
from vitlab.training.optim_impl import implementation

TINY_VIT = functools.partial(
    create_backbone, name="vit_tiny_patch16_224", img_size=16, patch_size=4, embed_dim=32, depth=2, num_heads=2
)
ADAMW = {"opt": "adamw", "lr": 1e-2, "weight_decay": 0.05}
SGD = {"opt": "sgd", "lr": 0.1, "momentum": 0.9, "weight_decay": 1e-4}  # Nesterov (timm's sgd)


def trained(optim: dict, dtype: torch.dtype, steps: int = 5) -> tuple[dict[str, torch.Tensor], str]:
    """The weights after `steps` updates on fixed batches, from a fixed start, and the implementation used."""
    torch.manual_seed(0)
    model = build_classifier(TINY_VIT, num_classes=5).to(dtype)
    optimizer = build_optimizer(model, optim)
    generator = torch.Generator().manual_seed(1)
    for _ in range(steps):
        x = torch.randn(4, 3, 16, 16, generator=generator, dtype=dtype)
        y = torch.randint(0, 5, (4,), generator=generator)
        optimizer.zero_grad()
        torch.nn.functional.cross_entropy(model(x), y).backward()
        optimizer.step()
    return {n: p.detach().clone() for n, p in model.named_parameters()}, implementation(optimizer)


@pytest.mark.parametrize("optim", [ADAMW, SGD], ids=["adamw", "sgd"])
@pytest.mark.parametrize("layer_decay", [None, 0.75])
def test_fused_steps_equal_the_for_loop_steps_in_float64(optim: dict, layer_decay: float | None) -> None:
    fused, fused_impl = trained({**optim, "fused": True, "layer_decay": layer_decay}, torch.float64)
    plain, plain_impl = trained({**optim, "fused": False, "foreach": False, "layer_decay": layer_decay}, torch.float64)
    assert (fused_impl, plain_impl) == ("fused", "for-loop")
    worst = max((fused[n] - plain[n]).abs().max().item() for n in plain)
    assert worst <= 1e-12, worst
    start, _ = trained({**optim, "fused": False}, torch.float64, steps=0)
    assert any(not torch.equal(start[n], plain[n]) for n in plain)  # the comparison is not of untouched weights


@pytest.mark.parametrize("optim", [ADAMW, SGD], ids=["adamw", "sgd"])
def test_one_fused_float32_step_is_within_four_ulp_of_the_for_loop_step(optim: dict) -> None:
    """One step from the same gradients (measured on a 2-core AMD EPYC: AdamW 1.97 ulp, SGD 0). After several
    float32 steps AdamW's difference grows to 1e-4 on this model: where a gradient is near 0, m/sqrt(v) turns an
    ulp into an lr-sized step, so only float64 (above) can compare several steps."""
    start, _ = trained(optim, torch.float32, steps=0)
    fused, _ = trained({**optim, "fused": True}, torch.float32, steps=1)
    plain, _ = trained({**optim, "foreach": False}, torch.float32, steps=1)
    eps = torch.finfo(torch.float32).eps
    for name in plain:
        scale = torch.maximum(plain[name].abs(), (plain[name] - start[name]).abs())  # the weight or the step taken
        assert ((fused[name] - plain[name]).abs() <= 4 * eps * scale).all(), name


@pytest.mark.parametrize("fused", ["auto", False])
def test_auto_and_false_on_cpu_are_torchs_default(fused: object) -> None:
    model = build_classifier(TINY_VIT, num_classes=5)
    optimizer = build_optimizer(model, {**ADAMW, "fused": fused})
    assert not optimizer.param_groups[0]["fused"] and implementation(optimizer) == "for-loop"


def test_true_with_an_optimiser_without_a_fused_kernel_is_refused_with_the_allowed_names() -> None:
    model = build_classifier(TINY_VIT, num_classes=5)
    with pytest.raises(ConfigError) as refused:
        build_optimizer(model, {"opt": "lamb", "lr": 1e-3, "fused": True})
    assert str(refused.value) == (
        "optim.fused=true: optim.opt=lamb has no fused implementation in torch. Allowed with optim.fused=true: "
        "adam, adamw, momentum, nesterov, sgd; or set optim.fused=auto or false."
    )
    assert implementation(build_optimizer(model, {"opt": "lamb", "lr": 1e-3, "fused": "auto"})) == "for-loop"


@pytest.mark.parametrize("fused", ["yes", 1, None])
def test_a_value_other_than_auto_true_false_is_refused(fused: object) -> None:
    model = build_classifier(TINY_VIT, num_classes=5)
    with pytest.raises(ConfigError, match=rf"optim.fused={fused!r} is not an option. Allowed: auto .*, true .*false"):
        build_optimizer(model, {**ADAMW, "fused": fused})


def test_auto_picks_fused_for_parameters_on_cuda() -> None:
    from vitlab.training.optim_impl import fused_kwargs

    assert fused_kwargs("adamw", "auto", torch.device("cuda", 0)) == {"fused": True}
    assert fused_kwargs("lookahead_sgd", "auto", torch.device("cuda", 0)) == {"fused": True}
    assert fused_kwargs("lamb", "auto", torch.device("cuda", 0)) == {}
    assert fused_kwargs("adamw", "auto", torch.device("cpu")) == {}
