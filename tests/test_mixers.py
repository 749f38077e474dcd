"""Token mixers against formulas, exact softmax attention and the reference packages on PyPI."""

from __future__ import annotations

import math
import re

import pytest
import torch
import torch.nn.functional as F
from linformer import LinformerSelfAttention
from nystrom_attention import NystromAttention
from performer_pytorch import SelfAttention as PerformerSelfAttention
from timm.models.vision_transformer import Attention

from vitlab.errors import ConfigError
from vitlab.models.geometry import TokenGeometry
from vitlab.models.mixers.attention import QKVAttention
from vitlab.models.mixers.fnet import FNetMixer
from vitlab.models.mixers.install import attention_like, copy_projections
from vitlab.models.mixers.linformer import LinformerKernel
from vitlab.models.mixers.mlp_mixer import TokenMixingMLP
from vitlab.models.mixers.nystrom import NystromKernel, iterative_pinv
from vitlab.models.mixers.performer import PerformerKernel
from vitlab.models.mixers.softmax import SoftmaxKernel

DIM, HEADS, HEAD_DIM = 64, 4, 16
GEO = TokenGeometry(dim=DIM, num_heads=HEADS, depth=1, grid_size=(8, 8), num_prefix_tokens=1)  # 65 tokens


def assert_same_function(
    ours: torch.nn.Module, ref: torch.nn.Module, x: torch.Tensor, atol: float = 1e-6, **kw
) -> None:
    """Equal outputs, and equal gradients with respect to the input (so backward passes agree too)."""
    xa, xb = x.clone().requires_grad_(), x.clone().requires_grad_()
    out_a, out_b = ours(xa), ref(xb, **kw)
    torch.testing.assert_close(out_a, out_b, rtol=0, atol=atol)
    weights = torch.randn_like(out_a)
    (out_a * weights).sum().backward()
    (out_b * weights).sum().backward()
    torch.testing.assert_close(xa.grad, xb.grad, rtol=1e-4, atol=10 * atol)


def qkv_slices(attn: QKVAttention) -> tuple[torch.Tensor, ...]:
    """Our fused `qkv` weight/bias split into (q, k, v) rows (v empty when values are the keys)."""
    w, b = attn.qkv.weight.data, attn.qkv.bias
    cuts = [attn.attn_dim, attn.attn_dim + attn.kv_dim]
    ws = (w[: cuts[0]], w[cuts[0] : cuts[1]], w[cuts[1] :])
    bs = (b.data[: cuts[0]], b.data[cuts[0] : cuts[1]], b.data[cuts[1] :]) if b is not None else (None,) * 3
    return ws + bs


def test_softmax_equals_timm_attention_on_the_same_weights() -> None:
    torch.manual_seed(0)
    timm_attn = Attention(DIM, num_heads=HEADS, qkv_bias=True).eval()
    ours = attention_like(timm_attn, GEO, SoftmaxKernel).eval()
    copy_projections(timm_attn, ours)
    naive = attention_like(timm_attn, GEO, lambda **kw: SoftmaxKernel(**kw, impl="naive")).eval()
    copy_projections(timm_attn, naive)
    x = torch.randn(2, 65, DIM)
    torch.testing.assert_close(ours(x), timm_attn(x), rtol=0, atol=1e-6)
    torch.testing.assert_close(naive(x), timm_attn(x), rtol=0, atol=1e-5)
    assert set(ours.state_dict()) == set(timm_attn.state_dict())  # same names: timm checkpoints load strictly


@pytest.mark.parametrize("n", [64, 65, 100, 17])  # no padding; padding; padding with whole empty segments
def test_nystrom_equals_nystrom_attention_package(n: int) -> None:
    torch.manual_seed(n)
    kernel = NystromKernel(GEO, HEADS, HEAD_DIM, num_landmarks=16, pinv_iterations=6, pinv_init="batch")
    ours = QKVAttention(DIM, HEADS, kernel)  # the package's to_qkv has no bias
    ref = NystromAttention(DIM, dim_head=HEAD_DIM, heads=HEADS, num_landmarks=16, pinv_iterations=6)
    wq, wk, wv, *_ = qkv_slices(ours)
    ref.to_qkv.weight.data.copy_(torch.cat([wq, wk, wv]))
    ref.to_out[0].load_state_dict(ours.proj.state_dict())
    ref.res_conv.load_state_dict(kernel.res_conv.state_dict())
    x = torch.randn(3, n, DIM)
    mask = torch.ones(3, n, dtype=torch.bool)  # all tokens real: the package then masks its front padding
    assert_same_function(ours, ref, x, atol=2e-6, mask=mask)
    if n % 16:  # without a mask the package lets its zero padding into the segment means and softmaxes
        assert not torch.allclose(ref(x), ref(x, mask=mask), atol=1e-4)


@pytest.mark.parametrize("n", [64, 65, 100, 17])
def test_nystrom_official_padding_equals_nystrom_attention_package_without_a_mask(n: int) -> None:
    """padding=official + pinv_init=batch is the ViX code's layer, which is the package called without a mask:
    zero pads in the landmark means (sum / l) and in all three softmaxes."""
    torch.manual_seed(n)
    kernel = NystromKernel(GEO, HEADS, HEAD_DIM, num_landmarks=16, pinv_init="batch", padding="official")
    ours = QKVAttention(DIM, HEADS, kernel)
    ref = NystromAttention(DIM, dim_head=HEAD_DIM, heads=HEADS, num_landmarks=16, pinv_iterations=6)
    wq, wk, wv, *_ = qkv_slices(ours)
    ref.to_qkv.weight.data.copy_(torch.cat([wq, wk, wv]))
    ref.to_out[0].load_state_dict(ours.proj.state_dict())
    ref.res_conv.load_state_dict(kernel.res_conv.state_dict())
    assert_same_function(ours, ref, torch.randn(3, n, DIM), atol=2e-6)
    # ... and the residual convolution's weight gradient (ours: one plane per sample and head, summed)
    torch.testing.assert_close(kernel.res_conv.weight.grad, ref.res_conv.weight.grad, rtol=1e-3, atol=1e-4)


def test_nystrom_paddings_are_one_function_when_the_landmarks_divide_the_length() -> None:
    torch.manual_seed(0)
    q, k, v = (torch.randn(2, HEADS, 64, HEAD_DIM, dtype=torch.float64) for _ in range(3))
    masked, official = (
        NystromKernel(GEO, HEADS, HEAD_DIM, num_landmarks=16, padding=p) for p in ("masked", "official")
    )
    official.load_state_dict(masked.state_dict())
    torch.testing.assert_close(official(q, k, v), masked(q, k, v), rtol=0, atol=0)
    assert official.rope_offset(64) == masked.rope_offset(64) == 0 and official.rope_offset(65) == 15
    short = (t[:, :, :60] for t in (q, k, v))  # 4 pads: the two differ
    q, k, v = short
    assert not torch.allclose(official(q, k, v), masked(q, k, v), atol=1e-6)


@pytest.mark.parametrize(
    ("build", "message"),
    [
        (lambda: NystromKernel(GEO, HEADS, HEAD_DIM, padding="front"), "model.mixer.kernel.padding='front'"),
        (lambda: PerformerKernel(GEO, HEADS, HEAD_DIM, stabiliser="max"), "model.mixer.kernel.stabiliser='max'"),
    ],
)
def test_bad_kernel_options_name_the_key_and_the_choices(build, message: str) -> None:
    with pytest.raises(ConfigError, match=re.escape(message) + ".*(masked|per_head)"):
        build()


def test_performer_batch_stabiliser_couples_the_samples_and_per_head_does_not() -> None:
    """The ViX code's key maximum is taken over the whole batch; ε is added after it, so the other images
    change a sample's output. Per sample and head (ours), a sample alone gives the same output."""
    torch.manual_seed(0)
    q, k, v = (torch.randn(3, HEADS, 40, HEAD_DIM, dtype=torch.float64) for _ in range(3))
    k[1:] *= 3  # larger keys elsewhere in the batch raise the batch-wide maximum
    for stabiliser, coupled in (("per_head", False), ("batch", True)):
        kernel = PerformerKernel(GEO, HEADS, HEAD_DIM, stabiliser=stabiliser).double()
        alone = kernel(q[:1], k[:1], v[:1])
        assert torch.allclose(kernel(q, k, v)[:1], alone, rtol=0, atol=1e-12) is not coupled


def test_nystrom_with_one_landmark_per_token_is_exact_softmax_attention() -> None:
    torch.manual_seed(0)
    q, k, v = (torch.randn(2, HEADS, 16, HEAD_DIM, dtype=torch.float64) for _ in range(3))
    q, k = q * 0.5, k * 0.5
    kernel = NystromKernel(GEO, HEADS, HEAD_DIM, num_landmarks=16, pinv_iterations=30, residual=False)
    torch.testing.assert_close(kernel(q, k, v), F.scaled_dot_product_attention(q, k, v), rtol=0, atol=1e-8)


def test_iterative_pinv_converges_to_the_inverse() -> None:
    torch.manual_seed(0)
    x = torch.randn(3, 8, 8, dtype=torch.float64).softmax(-1)  # row-stochastic, like the landmark kernel
    torch.testing.assert_close(iterative_pinv(x, 40), torch.linalg.inv(x), rtol=0, atol=1e-8)


def test_nystrom_matrix_init_makes_each_sample_independent_of_the_batch() -> None:
    torch.manual_seed(0)
    q, k, v = (torch.randn(4, HEADS, 65, HEAD_DIM) for _ in range(3))
    q[1:] *= 5  # other samples with larger logits change the batch-wide pinv scaling
    per_matrix = NystromKernel(GEO, HEADS, HEAD_DIM, num_landmarks=16, residual=False, pinv_init="matrix")
    batch_wide = NystromKernel(GEO, HEADS, HEAD_DIM, num_landmarks=16, residual=False, pinv_init="batch")
    alone = per_matrix(q[:1], k[:1], v[:1])
    torch.testing.assert_close(per_matrix(q, k, v)[:1], alone, rtol=0, atol=1e-6)
    assert not torch.allclose(batch_wide(q, k, v)[:1], alone, atol=1e-6)


@pytest.mark.parametrize("n", [65, 40])  # the built length; a shorter sequence uses the first rows of E
@pytest.mark.parametrize(("share_kv", "one_kv_head"), [(False, False), (True, True), (True, False), (False, True)])
def test_linformer_equals_linformer_package(n: int, share_kv: bool, one_kv_head: bool) -> None:
    torch.manual_seed(1)
    kernel = LinformerKernel(GEO, HEADS, HEAD_DIM, k=16, share_kv=share_kv, one_kv_head=one_kv_head)
    ours = QKVAttention(DIM, HEADS, kernel)
    ref = LinformerSelfAttention(
        DIM, GEO.seq_len, k=16, heads=HEADS, dim_head=HEAD_DIM, one_kv_head=one_kv_head, share_kv=share_kv
    )
    wq, wk, wv, *_ = qkv_slices(ours)
    ref.to_q.weight.data.copy_(wq)
    ref.to_k.weight.data.copy_(wk)
    ref.proj_k.data.copy_(kernel.proj_k)
    if not share_kv:
        ref.to_v.weight.data.copy_(wv)
        ref.proj_v.data.copy_(kernel.proj_v)
    ref.to_out.load_state_dict(ours.proj.state_dict())
    assert sum(p.numel() for p in ours.parameters()) == sum(p.numel() for p in ref.parameters())
    assert_same_function(ours, ref, torch.randn(2, n, DIM))


@pytest.mark.parametrize(("share_kv", "one_kv_head"), [(False, False), (True, True)])
def test_linformer_projecting_tokens_first_equals_projecting_keys(share_kv: bool, one_kv_head: bool) -> None:
    """Without RoPE the tokens are projected along the sequence before the k/v maps (biases included)."""
    torch.manual_seed(3)
    kernel = LinformerKernel(GEO, HEADS, HEAD_DIM, k=16, share_kv=share_kv, one_kv_head=one_kv_head)
    attn = QKVAttention(DIM, HEADS, kernel, qkv_bias=True)
    torch.nn.init.normal_(attn.qkv.bias)
    x = torch.randn(2, 65, DIM)
    projected_first = attn(x)
    attn.rope = lambda q, k, offset=0: (q, k)  # an identity "rotation" forces the per-head path
    torch.testing.assert_close(projected_first, attn(x), rtol=0, atol=1e-5)


def test_performer_equals_performer_pytorch_with_the_same_features() -> None:
    torch.manual_seed(2)
    kernel = PerformerKernel(GEO, HEADS, HEAD_DIM)
    ours = QKVAttention(DIM, HEADS, kernel, qkv_bias=True)
    ref = PerformerSelfAttention(DIM, heads=HEADS, dim_head=HEAD_DIM, nb_features=kernel.nb_features, qkv_bias=True)
    wq, wk, wv, bq, bk, bv = qkv_slices(ours)
    for lin, w, b in ((ref.to_q, wq, bq), (ref.to_k, wk, bk), (ref.to_v, wv, bv)):
        lin.weight.data.copy_(w)
        lin.bias.data.copy_(b)
    ref.to_out.load_state_dict(ours.proj.state_dict())
    ref.fast_attention.projection_matrix.copy_(kernel.projection_matrix)
    assert_same_function(ours, ref, torch.randn(2, 65, DIM))


def test_performer_fused_feature_map_has_the_exact_gradient() -> None:
    from vitlab.models.mixers.performer import _ExpFeatures

    proj = torch.randn(2, 3, 5, 7, dtype=torch.float64, requires_grad=True)
    shift = torch.randn(2, 3, 5, 1, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda p, s: _ExpFeatures.apply(p, s, 0.3), (proj, shift))


def test_performer_default_feature_count_is_d_ln_d_and_features_are_orthogonal() -> None:
    kernel = PerformerKernel(GEO, 4, 32)
    assert kernel.nb_features == int(32 * math.log(32)) == 110  # ViX's ViP
    block = kernel.projection_matrix[:32]
    directions = block / block.norm(dim=1, keepdim=True)
    torch.testing.assert_close(directions @ directions.T, torch.eye(32), rtol=0, atol=1e-5)


def test_performer_error_against_softmax_falls_as_features_grow() -> None:
    q, k, v = (torch.randn(2, HEADS, 64, HEAD_DIM, generator=torch.Generator().manual_seed(i)) for i in range(3))
    exact = F.scaled_dot_product_attention(q * 0.5, k * 0.5, v)
    errors = []
    for m in (8, 64, 512, 4096):
        rmse = []
        for seed in range(4):
            torch.manual_seed(seed)
            approx = PerformerKernel(GEO, HEADS, HEAD_DIM, nb_features=m)(q * 0.5, k * 0.5, v)
            rmse.append((approx - exact).pow(2).mean().sqrt())
        errors.append(torch.stack(rmse).mean().item())
    assert errors == sorted(errors, reverse=True), errors
    assert errors[-1] < errors[0] / 4, errors


def test_performer_redraw_is_deterministic_given_the_generator() -> None:
    a, b = PerformerKernel(GEO, HEADS, HEAD_DIM), PerformerKernel(GEO, HEADS, HEAD_DIM)
    before = a.projection_matrix.clone()
    a.redraw(torch.Generator().manual_seed(7))
    b.redraw(torch.Generator().manual_seed(7))
    assert not torch.equal(a.projection_matrix, before)
    torch.testing.assert_close(a.projection_matrix, b.projection_matrix, rtol=0, atol=0)


def test_fnet_is_the_real_part_of_the_2d_dft() -> None:
    x = torch.randn(2, 10, 6, dtype=torch.float64)

    def dft(n: int) -> torch.Tensor:
        idx = torch.arange(n, dtype=torch.float64)
        return torch.exp(-2j * math.pi * idx[:, None] * idx[None, :] / n)

    expected = (dft(10) @ x.to(torch.complex128) @ dft(6)).real  # F_N X F_D, both symmetric
    torch.testing.assert_close(FNetMixer()(x), expected, rtol=0, atol=1e-10)


def test_token_mixing_mlp_mixes_tokens_not_channels() -> None:
    torch.manual_seed(0)
    mixer = TokenMixingMLP(GEO, expansion=1.0)
    assert mixer.fc1.in_features == mixer.fc1.out_features == GEO.seq_len  # ViX: expansion 1, Conv1d(k=1)
    x = torch.randn(2, GEO.seq_len, DIM)
    perm = torch.randperm(DIM)
    torch.testing.assert_close(mixer(x[..., perm]), mixer(x)[..., perm])  # channels are independent
    y = x.clone()
    y[:, 3] += 1.0
    assert not torch.allclose(mixer(y)[:, 10], mixer(x)[:, 10])  # token 3 reaches token 10


@pytest.mark.parametrize(
    "build",
    [
        lambda geo: LinformerKernel(geo, HEADS, HEAD_DIM),
        lambda geo: TokenMixingMLP(geo),
    ],
    ids=["linformer", "mlp_mixer"],
)
def test_length_bound_mixers_refuse_a_dynamic_image_size(build) -> None:
    geo = TokenGeometry(DIM, HEADS, 1, (8, 8), 1, dynamic_img_size=True)
    with pytest.raises(ConfigError, match="dynamic_img_size"):
        build(geo)


def test_feature_redraw_callback_follows_each_kernels_interval() -> None:
    from types import SimpleNamespace

    from vitlab.training.feature_redraw import RandomFeatureRedraw

    every_2, never = PerformerKernel(GEO, HEADS, HEAD_DIM, redraw_interval=2), PerformerKernel(GEO, HEADS, HEAD_DIM)
    module = torch.nn.ModuleList([every_2, never])
    callback = RandomFeatureRedraw(seed=3)
    history = []
    for step in range(5):
        callback.on_train_batch_start(SimpleNamespace(global_step=step), module, None, step)
        history.append((every_2.projection_matrix.clone(), never.projection_matrix.clone()))
    changed = [not torch.equal(history[i][0], history[i - 1][0]) for i in range(1, 5)]
    assert changed == [False, True, False, True]  # steps 2 and 4
    assert all(torch.equal(h[1], history[0][1]) for h in history)
    replica = PerformerKernel(GEO, HEADS, HEAD_DIM, redraw_interval=2)  # another DDP rank, same step
    RandomFeatureRedraw(seed=3).on_train_batch_start(
        SimpleNamespace(global_step=4), torch.nn.ModuleList([replica]), None, 0
    )
    torch.testing.assert_close(replica.projection_matrix, every_2.projection_matrix, rtol=0, atol=0)
