"""Mixed precision on the CPU: every mixer and head under bfloat16 and float16 autocast agrees with fp32.

Each model is a one-block ViT (dim 32, 2 heads, patch 2) at 65 tokens (16 px) and 1,025 tokens (64 px), so the
known risks — Nyström's iterative pseudo-inverse and Performer's exponentials — see a realistic sequence.
Agreement is the relative L2 error of the logits and of all parameter gradients against the same model in fp32:

    bfloat16 (8-bit mantissa, eps 2^-8):  ≤ 0.03     measured here: ≤ 0.007
    float16 (11-bit mantissa, eps 2^-11): ≤ 0.005    measured here: ≤ 0.001

The float16 path additionally trains a few steps with a gradient scaler without inf/NaN.
"""

from __future__ import annotations

import pytest
import torch
from hydra.utils import instantiate
from torch import nn

from conftest import compose_cfg

MIXERS = ["softmax", "performer", "linformer", "nystrom", "fnet", "mlp_mixer", "eit"]
HEADS = ["linear", "memory_ode"]
TOLERANCE = {torch.bfloat16: 0.03, torch.float16: 0.005}
SIDES = {65: 8, 1025: 32}  # tokens -> patch grid side (patch 2, plus the class token)


def tiny_model(tokens: int, mixer: str | None = None, head: str | None = None) -> nn.Module:
    side = SIDES[tokens]
    overrides = [
        "~model/stem",  # timm's patch embedding: the token count is exactly side² + 1
        f"data.img_size={2 * side}",
        "model.backbone.patch_size=2",
        "model.backbone.embed_dim=32",
        "model.backbone.depth=1",
        "model.backbone.num_heads=2",
        "model.backbone.drop_path_rate=0.0",
    ]
    if mixer:
        overrides.append(f"model/mixer={mixer}")
    if head:
        overrides.append(f"model/head={head}")
    if head == "memory_ode":
        overrides.append("model.head.out_init=trunc_normal")  # zero W_o would give zero logits: nothing to compare
    torch.manual_seed(0)
    return instantiate(compose_cfg(overrides).model, num_classes=10)


def forward_backward(model: nn.Module, x: torch.Tensor, y: torch.Tensor, dtype: torch.dtype | None):
    """Logits (fp32) and the concatenated parameter gradients of one step, under autocast to `dtype`."""
    model.zero_grad(set_to_none=True)
    with torch.autocast("cpu", dtype=dtype or torch.bfloat16, enabled=dtype is not None):
        logits = model(x)
    nn.functional.cross_entropy(logits.float(), y).backward()
    grads = torch.cat([p.grad.flatten() for p in model.parameters() if p.grad is not None])
    return logits.detach().float(), grads


def relative_error(a: torch.Tensor, ref: torch.Tensor) -> float:
    return float((a.float() - ref).norm() / ref.norm().clamp_min(1e-12))


def assert_agrees(model: nn.Module, tokens: int) -> None:
    side = SIDES[tokens]
    x, y = torch.randn(4, 3, 2 * side, 2 * side), torch.randint(0, 10, (4,))
    ref_logits, ref_grads = forward_backward(model, x, y, None)
    for dtype, tol in TOLERANCE.items():
        logits, grads = forward_backward(model, x, y, dtype)
        assert torch.isfinite(logits).all() and torch.isfinite(grads).all(), f"{dtype}: inf/NaN"
        errors = {"logits": relative_error(logits, ref_logits), "gradients": relative_error(grads, ref_grads)}
        assert max(errors.values()) <= tol, f"{dtype} vs fp32 at {tokens} tokens: {errors} (tolerance {tol})"


@pytest.mark.parametrize("tokens", sorted(SIDES))
@pytest.mark.parametrize("mixer", MIXERS)
def test_mixer_agrees_with_fp32_under_autocast(mixer: str, tokens: int) -> None:
    assert_agrees(tiny_model(tokens, mixer=mixer), tokens)


@pytest.mark.parametrize("tokens", sorted(SIDES))
@pytest.mark.parametrize("head", HEADS)
def test_head_agrees_with_fp32_under_autocast(head: str, tokens: int) -> None:
    assert_agrees(tiny_model(tokens, head=head), tokens)


def test_autocast_really_lowers_precision() -> None:
    """Guards the tolerances above: if autocast silently ran fp32, every error would be 0 and prove nothing."""
    model = tiny_model(65)
    x, y = torch.randn(4, 3, 16, 16), torch.randint(0, 10, (4,))
    ref, _ = forward_backward(model, x, y, None)
    low, _ = forward_backward(model, x, y, torch.bfloat16)
    assert relative_error(low, ref) > 1e-4


@pytest.mark.parametrize("mixer", ["nystrom", "performer"])
def test_float16_with_grad_scaler_trains_without_inf_or_nan(mixer: str) -> None:
    """What `trainer.precision=16-mixed` does per step: autocast fp16, scaled loss, unscale, skip on overflow."""
    model = tiny_model(65, mixer=mixer, head="memory_ode")
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    scaler = torch.amp.GradScaler("cpu")
    before = [p.detach().clone() for p in model.parameters()]
    x, y = torch.randn(8, 3, 16, 16), torch.randint(0, 10, (8,))
    for _ in range(4):
        optimizer.zero_grad(set_to_none=True)
        with torch.autocast("cpu", dtype=torch.float16):
            loss = nn.functional.cross_entropy(model(x).float(), y)
        assert torch.isfinite(loss), f"loss {loss}"
        scaler.scale(loss).backward()
        scaler.step(optimizer)
        scaler.update()
    assert all(torch.isfinite(p).all() for p in model.parameters())
    assert any(not torch.equal(a, b) for a, b in zip(before, model.parameters(), strict=True)), "no step was taken"
