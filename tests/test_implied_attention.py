"""Every attention kernel's implied N×N matrix is what the kernel does: A v (+ R v) equals its own output.

A is `kernel.implied_attention(q, k)` and R `kernel.residual_matrix(N)` (Nyström's residual convolution); both are
checked against the kernel's forward, not against a second formula of ours: max |A v + R v − out| ≤ 1e-6 in fp32
and ≤ 1e-12 in fp64 (relative to max(1, max |out|)). Row sums are checked where they are a property of the method.
"""

from __future__ import annotations

import functools

import pytest
import torch
import torch.nn.functional as F

from vitlab.models.adapters.rope import Rotary
from vitlab.models.geometry import TokenGeometry
from vitlab.models.mixers import nystrom as nystrom_module
from vitlab.models.mixers.attention import QKVAttention
from vitlab.models.mixers.eit import DecreasingConvMixer
from vitlab.models.mixers.linformer import LinformerKernel
from vitlab.models.mixers.nystrom import NystromKernel
from vitlab.models.mixers.performer import PerformerKernel
from vitlab.models.mixers.softmax import SoftmaxKernel

H, D, N = 4, 16, 26  # 25 patches (5 × 5) + a class token
GEO = TokenGeometry(dim=H * D, num_heads=H, depth=2, grid_size=(5, 5), num_prefix_tokens=1)
TOLERANCE = {torch.float32: 1e-6, torch.float64: 1e-12}

# N = 26: 8 landmarks pad 6 in front (segments of 4: one whole segment of pads, masked as an empty landmark),
# 13 landmarks divide 26 (no padding), 20 landmarks pad 14 (seven empty landmarks)
KERNELS = {
    "softmax-sdpa": functools.partial(SoftmaxKernel, impl="sdpa"),
    "softmax-naive": functools.partial(SoftmaxKernel, impl="naive"),
    "nystrom-masked-pad": functools.partial(NystromKernel, num_landmarks=8),
    "nystrom-masked-many-pads": functools.partial(NystromKernel, num_landmarks=20, residual_kernel=5),
    "nystrom-no-pad": functools.partial(NystromKernel, num_landmarks=13),
    "nystrom-official-pad": functools.partial(NystromKernel, num_landmarks=8, padding="official"),
    "nystrom-batch-pinv": functools.partial(NystromKernel, num_landmarks=8, pinv_init="batch"),
    "nystrom-no-residual": functools.partial(NystromKernel, num_landmarks=8, residual=False),
    "performer": PerformerKernel,
    "performer-batch-stabiliser": functools.partial(PerformerKernel, stabiliser="batch"),
    "linformer": functools.partial(LinformerKernel, k=8),
}


def kernel(name: str, dtype: torch.dtype) -> torch.nn.Module:
    torch.manual_seed(0)
    built = KERNELS[name](geo=GEO, num_heads=H, head_dim=D, attn_drop=0.0).to(dtype).eval()
    if getattr(built, "res_conv", None) is not None:  # a trained-looking residual: asymmetric taps
        torch.nn.init.normal_(built.res_conv.weight, std=0.3)
    return built


def assert_reproduces(reconstructed: torch.Tensor, out: torch.Tensor, dtype: torch.dtype) -> None:
    error = float((reconstructed - out).abs().max())
    assert error <= TOLERANCE[dtype] * max(1.0, float(out.abs().max())), error


def mixed(k: torch.nn.Module, q: torch.Tensor, key: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """A v + R v: what the implied matrices say the kernel returns."""
    out = k.implied_attention(q, key) @ v
    residual = k.residual_matrix(q.shape[-2], q.dtype, q.device)
    return out if residual is None else out + residual @ v


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=["fp32", "fp64"])
@pytest.mark.parametrize("name", sorted(KERNELS))
def test_implied_matrix_times_values_is_the_kernels_output(name: str, dtype: torch.dtype) -> None:
    k = kernel(name, dtype)
    gen = torch.Generator().manual_seed(1)
    q, key, v = (torch.randn(2, H, N, D, generator=gen, dtype=dtype) for _ in range(3))
    with torch.no_grad():
        assert_reproduces(mixed(k, q, key, v), k(q, key, v), dtype)


def test_nystrom_residual_matrix_is_the_convolution_and_is_needed() -> None:
    """R v equals `res_conv` applied to v, and leaving R out breaks the identity (it is not a no-op here)."""
    k = kernel("nystrom-masked-pad", torch.float64)
    v = torch.randn(2, H, N, D, dtype=torch.float64)
    R = k.residual_matrix(N, torch.float64, v.device)
    conv = F.conv2d(v, k.res_conv.weight, padding=k.res_conv.padding, groups=H)  # (B, H, N, D) planes per head
    torch.testing.assert_close(R @ v, conv, rtol=0, atol=1e-12)
    q, key = torch.randn(2, 2, H, N, D, dtype=torch.float64)
    with torch.no_grad():
        assert float((k.implied_attention(q, key) @ v - k(q, key, v)).abs().max()) > 1e-3


@pytest.mark.parametrize("name", ["softmax-sdpa", "performer", "performer-batch-stabiliser"])
def test_rows_sum_to_one_where_the_mixer_normalises(name: str) -> None:
    k = kernel(name, torch.float32)
    q, key = torch.randn(2, 2, H, N, D)
    A = k.implied_attention(q, key)
    torch.testing.assert_close(A.sum(dim=-1), torch.ones(2, H, N), rtol=0, atol=1e-6)
    assert bool((A >= 0).all())


def test_linformer_rows_are_the_projected_softmax_times_the_value_projections_column_sums() -> None:
    """softmax over the k projected keys sums to 1; the implied n×n rows sum to that times Fᵀ1, not to 1."""
    k = kernel("linformer", torch.float64)
    q, key = torch.randn(2, 2, H, N, D, dtype=torch.float64)
    weights = k.projected_attention(q, key)
    torch.testing.assert_close(weights.sum(dim=-1), torch.ones(2, H, N, dtype=torch.float64), rtol=0, atol=1e-12)
    rows = k.implied_attention(q, key).sum(dim=-1)
    torch.testing.assert_close(rows, weights @ k.proj_v.sum(dim=0), rtol=0, atol=1e-12)
    assert float((rows - 1).detach().abs().max()) > 1e-2  # a learned F: rows are not distributions


@pytest.mark.parametrize("landmarks", [13, 8], ids=["no-pad", "masked-pad"])
def test_nystrom_rows_sum_to_one_as_far_as_the_pinv_inverts(landmarks: int, monkeypatch) -> None:
    """softmax(Q̃K̃ᵀ) is row-stochastic, so its inverse maps 1 to 1 and A 1 = 1 exactly with a true inverse; the
    6-step iterative pinv leaves rows off 1, and more steps bring them to 1."""
    q, key = torch.randn(2, 2, H, N, D, dtype=torch.float64)

    def row_error(iterations: int) -> float:
        k = NystromKernel(GEO, H, D, num_landmarks=landmarks, pinv_iterations=iterations).double()
        return float((k.implied_attention(q, key).sum(dim=-1) - 1).abs().max())

    few, many = row_error(6), row_error(60)
    assert few > 1e-6 and many < 1e-9
    monkeypatch.setattr(nystrom_module, "iterative_pinv", lambda x, iterations, init: torch.linalg.inv(x))
    assert row_error(6) < 1e-10


def attention(kernel_name: str, dtype: torch.dtype, **options) -> QKVAttention:
    torch.manual_seed(0)
    factory = functools.partial(KERNELS[kernel_name], **options)
    built = factory(geo=GEO, num_heads=H, head_dim=D, attn_drop=0.0)
    return QKVAttention(H * D, H, built, qkv_bias=True).to(dtype).eval()


def merged_output(attn: QKVAttention, x: torch.Tensor) -> torch.Tensor:
    """proj(merge_heads(A v + R v)): the module's output from its implied matrices."""
    A, v = attn.implied_attention(x)
    mixed_values = A @ v
    R = attn.kernel.residual_matrix(x.shape[1], x.dtype, x.device)
    if R is not None:
        mixed_values = mixed_values + R @ v
    return attn.proj(mixed_values.transpose(1, 2).reshape(x.shape[0], x.shape[1], -1))


MODULES = {
    "linformer-projected-path": ("linformer", {}, None),  # without RoPE, keys/values are projected first
    "linformer-share-kv": ("linformer", {"share_kv": True}, None),
    "linformer-one-kv-head": ("linformer", {"one_kv_head": True}, None),
    "linformer-share-kv-rope": ("linformer", {"share_kv": True}, "1d"),  # values: keys before rotation
    "nystrom-official-rope": ("nystrom-official-pad", {}, "1d"),  # rotated after the code's front padding
    "performer-rope2d": ("performer", {}, "2d"),
    "softmax-rope": ("softmax-sdpa", {}, "1d"),
}


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=["fp32", "fp64"])
@pytest.mark.parametrize("name", sorted(MODULES))
def test_a_whole_attention_module_is_its_implied_matrices(name: str, dtype: torch.dtype) -> None:
    """Through QKVAttention: q/k/v layouts (share_kv, one_kv_head), RoPE and Linformer's projected path."""
    kernel_name, options, rope = MODULES[name]
    attn = attention(kernel_name, dtype, **options)
    if rope is not None:
        attn.rope = Rotary(D, GEO, rope)
    x = torch.randn(2, N, H * D, dtype=dtype, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        assert_reproduces(merged_output(attn, x), attn(x), dtype)


@pytest.mark.parametrize("kernel_name", ["softmax-sdpa", "nystrom-masked-pad", "performer", "linformer"])
def test_eit_attention_channels_are_their_implied_matrix(kernel_name: str) -> None:
    """EIT's mixer: its attention channels are the implied matrix's output; the rows of a softmax kernel sum to 1."""
    torch.manual_seed(0)
    dim = 32
    geo = TokenGeometry(dim=dim, num_heads=H, depth=4, grid_size=(5, 5), num_prefix_tokens=1)
    mixer = DecreasingConvMixer(geo, 1, KERNELS[kernel_name]).double().eval()
    c = mixer.conv_channels
    x = torch.randn(2, N, dim, dtype=torch.float64)
    with torch.no_grad():
        assert_reproduces(merged_output(mixer.attn, x[..., c:]), mixer(x)[..., c:], torch.float64)
        A, _ = mixer.attn.implied_attention(x[..., c:])
    if kernel_name == "softmax-sdpa":
        torch.testing.assert_close(A.sum(-1), torch.ones_like(A.sum(-1)), rtol=0, atol=1e-12)
