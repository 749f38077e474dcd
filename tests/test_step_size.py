"""Learnable Euler step sizes (docs/papers/ode.md): counts, the h = 1 identity, gradients, options, freezing."""

from __future__ import annotations

import functools

import pytest
import torch
from timm.layers import LayerScale
from torch import nn

from vitlab.errors import ConfigError
from vitlab.models.adapters.step_size import DynamicEulerStep, EulerStep, install_step_sizes, step_sizes
from vitlab.models.backbone import create_backbone
from vitlab.models.build import build_classifier
from vitlab.models.summary import param_counts
from vitlab.training.constraints import modules_with, regularization_loss

VIT_B = functools.partial(create_backbone, name="vit_base_patch16_224", img_size=224)
TINY = functools.partial(
    create_backbone, name="vit_tiny_patch16_224", img_size=16, patch_size=4, embed_dim=32, depth=3, num_heads=2
)


def steps(**kw) -> functools.partial:
    return functools.partial(install_step_sizes, **kw)


@pytest.fixture(scope="module")
def vit_b_reference() -> nn.Module:
    torch.manual_seed(0)
    return create_backbone("vit_base_patch16_224", num_classes=10, img_size=224).eval()


@pytest.mark.parametrize(("kind", "expected"), [("scalar", 24), ("channel", 2 * 12 * 768), ("dynamic", 2 * 12 * 769)])
def test_vit_b_frozen_trainable_counts_match_the_formulas(kind: str, expected: int, vit_b_reference) -> None:
    model = build_classifier(VIT_B, num_classes=10, step_size=steps(kind=kind))
    counts = param_counts(model)
    assert counts["params/trainable_no_head"] == expected
    assert counts["params/trainable"] == expected + 768 * 10 + 10  # + timm's linear head
    assert counts["params/total"] == sum(p.numel() for p in vit_b_reference.parameters()) + expected


@pytest.mark.parametrize("kind", ["scalar", "channel", "dynamic"])
def test_h_equal_one_is_the_stock_timm_model_exactly(kind: str, vit_b_reference) -> None:
    model = build_classifier(VIT_B, num_classes=10, step_size=steps(kind=kind)).eval()
    missing, unexpected = model.backbone.load_state_dict(vit_b_reference.state_dict(), strict=False)
    assert not unexpected and all(".ls1." in k or ".ls2." in k for k in missing)
    x = torch.randn(2, 3, 224, 224)
    with torch.no_grad():
        assert torch.equal(model(x), vit_b_reference(x))


@pytest.mark.parametrize("kind", ["scalar", "channel", "dynamic"])
def test_every_step_size_gets_a_gradient_and_nothing_frozen_does(kind: str) -> None:
    model = build_classifier(TINY, num_classes=5, step_size=steps(kind=kind))
    model(torch.randn(4, 3, 16, 16)).logsumexp(-1).sum().backward()
    trainable = {n: p for n, p in model.named_parameters() if p.requires_grad}
    assert set(trainable) == {n for n, _ in model.named_parameters() if ".ls" in n or n.startswith("backbone.head")}
    for name, p in trainable.items():
        assert p.grad is not None and p.grad.abs().sum() > 0, name
    assert all(p.grad is None for p in model.parameters() if not p.requires_grad)


def test_scalar_step_size_scales_the_residual_update_as_the_euler_formula() -> None:
    torch.manual_seed(0)
    vit = install_step_sizes(TINY(num_classes=0), kind="scalar").eval()
    block = vit.blocks[0]
    block.ls1.h_param.data.fill_(0.3)
    block.ls2.h_param.data.fill_(2.0)
    x = torch.randn(2, 17, 32)
    with torch.no_grad():
        half = x + 0.3 * block.attn(block.norm1(x))
        expected = half + 2.0 * block.mlp(block.norm2(half))
        assert torch.allclose(block(x), expected, atol=1e-6)
        block.ls1.h_param.data.fill_(0.0)
        block.ls2.h_param.data.fill_(0.0)
        assert torch.equal(block(x), x)  # h = 0: the block is skipped


def test_dynamic_step_size_follows_its_formula_per_image() -> None:
    torch.manual_seed(0)
    vit = install_step_sizes(TINY(num_classes=0), kind="dynamic", init=0.5).eval()
    block = vit.blocks[1]
    step: DynamicEulerStep = block.ls1
    step.weight.data.normal_()
    step.bias.data.fill_(0.2)
    x = torch.randn(3, 17, 32)
    with torch.no_grad():
        h = 0.5 * (1 + torch.tanh(x.mean(1) @ step.weight + 0.2))  # docs/papers/ode.md, dynamic
        half = x + h.view(3, 1, 1) * block.attn(block.norm1(x))
        expected = half + 0.5 * block.mlp(block.norm2(half))  # ls2 still at w = 0, b = 0: h = h0
        assert torch.allclose(block(x), expected, atol=1e-6)
        assert torch.allclose(step.step_size(x), h)


def test_positive_reparameterisation_starts_at_init_and_stays_positive() -> None:
    step = EulerStep(8, "channel", init=1.0, positive=True)
    assert torch.equal(step.step_size(), torch.ones(8))
    step.h_param.data.fill_(-30.0)
    assert (step.step_size() > 0).all()
    unconstrained = EulerStep(8, "channel", init=1.0)
    unconstrained.h_param.data.fill_(-1.0)
    assert (unconstrained.step_size() < 0).all()


def test_init_noise_and_l2_pull_towards_init() -> None:
    torch.manual_seed(0)
    model = build_classifier(TINY, num_classes=3, step_size=steps(kind="channel", init_std=1e-3, l2_to_init=0.5))
    hs = torch.cat([h.flatten() for h in step_sizes(model.backbone).values()])
    assert hs.numel() == 2 * 3 * 32 and 0 < (hs - 1).abs().max() < 1e-2
    penalty = regularization_loss(modules_with(model, "regularization"))
    assert torch.allclose(penalty, 0.5 * (hs - 1).pow(2).sum())
    no_reg = build_classifier(TINY, num_classes=3, step_size=steps(kind="scalar"))
    assert regularization_loss(modules_with(no_reg, "regularization")) is None


def test_step_sizes_are_exempt_from_weight_decay() -> None:
    model = build_classifier(TINY, num_classes=3, step_size=steps(kind="scalar"))
    assert "backbone.blocks.0.ls1.h_param" in model.no_weight_decay()


def test_a_layer_scale_backbone_is_refused_unless_composed() -> None:
    vit = TINY(num_classes=0)
    for block in vit.blocks:
        block.ls1, block.ls2 = LayerScale(32, init_values=0.1), LayerScale(32, init_values=0.1)
    x = torch.randn(2, 3, 16, 16)
    with torch.no_grad():
        before = vit.eval()(x)
    with pytest.raises(ConfigError, match="compose_layer_scale"):
        install_step_sizes(vit, kind="scalar")
    composed = install_step_sizes(vit, kind="scalar", compose_layer_scale=True).eval()
    assert "blocks.0.ls1.gamma" in composed.state_dict()  # LayerScale's γ keeps its key
    with torch.no_grad():
        assert torch.equal(composed(x), before)


def test_bad_options_are_clear_errors() -> None:
    with pytest.raises(ConfigError, match=r"model.step_size.kind='token'.*scalar, channel, dynamic"):
        build_classifier(TINY, num_classes=3, step_size=steps(kind="token"))
    with pytest.raises(ConfigError, match=r"model\.step_size\.positive"):
        build_classifier(TINY, num_classes=3, step_size=steps(kind="dynamic", positive=True))
    with pytest.raises(ConfigError, match=r"model\.freeze='partly'"):
        build_classifier(TINY, num_classes=3, freeze="partly")


def test_freeze_modes() -> None:
    auto = build_classifier(TINY, num_classes=3, step_size=steps())
    unfrozen = build_classifier(TINY, num_classes=3, step_size=steps(), freeze="none")
    plain = build_classifier(TINY, num_classes=3)
    frozen_plain = build_classifier(TINY, num_classes=3, freeze="backbone")
    assert param_counts(auto)["params/trainable_no_head"] == 6
    assert param_counts(unfrozen)["params/trainable"] == param_counts(unfrozen)["params/total"]
    assert param_counts(plain)["params/trainable"] == param_counts(plain)["params/total"]
    assert param_counts(frozen_plain)["params/trainable_no_head"] == 0  # a linear probe
    assert param_counts(frozen_plain)["params/trainable"] == 32 * 3 + 3
