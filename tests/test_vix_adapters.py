"""RoPE, the convolutional stem, and every mixer x position option composed on a real timm ViT."""

from __future__ import annotations

import itertools
from pathlib import Path

import pytest
import torch
from hydra.utils import instantiate
from rotary_embedding_torch import RotaryEmbedding
from timm.layers import resample_abs_pos_embed

from conftest import compose_cfg
from vitlab.errors import ConfigError, find_config_error
from vitlab.models.adapters.rope import Rotary
from vitlab.models.backbone import create_backbone
from vitlab.models.geometry import TokenGeometry, geometry_of
from vitlab.models.stems.conv import ConvStem, default_strides

MIXERS = sorted(p.stem for p in (Path(__file__).parents[1] / "configs/model/mixer").glob("[!_]*.yaml"))
POSITIONS = sorted(p.stem for p in (Path(__file__).parents[1] / "configs/model/pos_embed").glob("[!_]*.yaml"))
NO_QK = {"fnet", "mlp_mixer", "eit"}  # mixers that refuse RoPE
SMALL = [  # 16 px, patch 4: 16 patches + class token, dim 32, 2 blocks, 2 heads of 16
    "data.img_size=16",
    "model.backbone.patch_size=4",
    "model.backbone.embed_dim=32",
    "model.backbone.depth=2",
    "model.backbone.num_heads=2",
]


def build(overrides: list[str], num_classes: int = 10) -> torch.nn.Module:
    return instantiate(compose_cfg(SMALL + overrides).model, num_classes=num_classes)


# --- RoPE -------------------------------------------------------------------------------------------------


def scores(rope: Rotary, n: int, head_dim: int) -> torch.Tensor:
    """q·k between every pair of positions when every token has the same query and the same key."""
    q = torch.randn(head_dim, dtype=torch.float64).expand(1, 1, n, head_dim)
    k = torch.randn(head_dim, dtype=torch.float64).expand(1, 1, n, head_dim)
    rq, rk = rope(q, k)
    return (rq @ rk.transpose(-1, -2))[0, 0]


def test_rope1d_scores_depend_only_on_relative_position() -> None:
    torch.manual_seed(0)
    s = scores(Rotary(16, TokenGeometry(32, 2, 1, (4, 4), 1), "1d"), 17, 16)
    torch.testing.assert_close(s[1:, 1:], s[:-1, :-1], rtol=0, atol=1e-10)  # Toeplitz: S[i,j] = f(i - j)
    assert s[0].std() > 1e-3  # ... and it does depend on the offset


def test_rope2d_scores_depend_only_on_the_grid_offset_and_leave_prefix_tokens_alone() -> None:
    torch.manual_seed(0)
    rope = Rotary(16, TokenGeometry(32, 2, 1, (4, 4), 1), "2d")
    s = scores(rope, 17, 16)[1:, 1:].reshape(4, 4, 4, 4)  # patch tokens as (row, col, row', col')
    torch.testing.assert_close(s[1:, :, 1:, :], s[:-1, :, :-1, :], rtol=0, atol=1e-10)  # shift rows
    torch.testing.assert_close(s[:, 1:, :, 1:], s[:, :-1, :, :-1], rtol=0, atol=1e-10)  # shift columns
    q = torch.randn(1, 2, 17, 16)
    rq, _ = rope(q, q)
    torch.testing.assert_close(rq[:, :, 0], q[:, :, 0], rtol=0, atol=0)  # class token not rotated


def test_rope1d_equals_rotary_embedding_torch() -> None:
    q = torch.randn(2, 4, 33, 32)
    ours, _ = Rotary(32, TokenGeometry(128, 4, 1, (4, 8), 1), "1d")(q, q)
    torch.testing.assert_close(ours, RotaryEmbedding(dim=32).rotate_queries_or_keys(q, seq_dim=-2), rtol=0, atol=1e-5)


def test_rope_replaces_the_learned_position_embedding_and_keeps_weights() -> None:
    torch.manual_seed(0)
    stock, roped = build([]), build(["model/pos_embed=rope1d"])
    assert stock.backbone.pos_embed is not None and roped.backbone.pos_embed is None
    stock_keys = set(stock.state_dict()) - {"backbone.pos_embed"}
    assert set(roped.state_dict()) == stock_keys  # RoPE adds no tensors; timm's qkv/proj names are kept


# --- convolutional stem -----------------------------------------------------------------------------------


@pytest.mark.parametrize(("patch", "strides"), [(1, [1, 1, 1]), (2, [2, 1, 1]), (4, [2, 2, 1]), (16, [2, 2, 4])])
def test_conv_stem_default_strides_multiply_to_the_patch_size(patch: int, strides: list[int]) -> None:
    assert default_strides(patch, 3) == strides


@pytest.mark.parametrize(("img", "patch"), [(32, 1), (32, 4), (64, 2), (224, 16), (48, 3)])
def test_conv_stem_produces_the_patch_grid(img: int, patch: int) -> None:
    stem = ConvStem((img, img), patch, 24)
    tokens = stem(torch.randn(2, 3, img, img))
    assert stem.grid_size == (img // patch, img // patch)
    assert tokens.shape == (2, stem.num_patches, 24) == (2, (img // patch) ** 2, 24)


def test_conv_stem_is_the_papers_three_convolutions_without_activations() -> None:
    stem = ConvStem((32, 32), 1, 128)
    convs = list(stem.body)
    assert [type(c).__name__ for c in convs] == ["Conv2d", "Identity", "Conv2d", "Identity", "Conv2d"]
    assert [(c.in_channels, c.out_channels, c.kernel_size, c.stride) for c in convs[::2]] == [
        (3, 32, (3, 3), (1, 1)),
        (32, 64, (3, 3), (1, 1)),
        (64, 128, (3, 3), (1, 1)),
    ]
    assert sum(p.numel() for p in stem.parameters()) == 93_248  # docs/papers/vix.md: +92,736 over Linear(3, 128)


def test_conv_stem_rejects_strides_that_do_not_make_the_patch_size() -> None:
    with pytest.raises(ConfigError, match=r"model\.stem\.strides"):
        ConvStem((32, 32), 4, 16, strides=[2, 1, 1])


@pytest.mark.parametrize("img", [16, 24])
def test_conv_stem_with_a_learned_position_embedding_at_any_image_size(img: int) -> None:
    model = build([f"data.img_size={img}", "model/stem=conv"])
    grid = img // 4
    assert geometry_of(model.backbone).grid_size == (grid, grid)
    assert model.backbone.pos_embed.shape == (1, grid * grid + 1, 32)
    assert model(torch.randn(2, 3, img, img)).shape == (2, 10)


def test_conv_stem_with_a_dynamic_image_size() -> None:
    """Built for 16 px with dynamic_img_size: at 16 px it is the static model; at 24 px it is the static 24 px
    model with the same weights and the 4x4 position table resampled to 6x6 (timm's bicubic resampling).
    Tolerance: 1e-5 relative (float32, same arithmetic in another order); the position table's own effect on
    the logits is asserted to be far larger, so ignoring or mis-sizing it cannot pass."""
    torch.manual_seed(0)
    dynamic = build(["model/stem=conv", "model.backbone.dynamic_img_size=true"]).eval()
    weights = dynamic.state_dict()
    static16 = build(["model/stem=conv"]).eval()
    static16.load_state_dict(weights)
    static24 = build(["data.img_size=24", "model/stem=conv"]).eval()
    pos = weights["backbone.pos_embed"]
    resampled = resample_abs_pos_embed(pos, new_size=[6, 6], old_size=[4, 4], num_prefix_tokens=1)
    static24.load_state_dict({**weights, "backbone.pos_embed": resampled})

    def relative(a: torch.Tensor, b: torch.Tensor) -> float:
        return ((a - b).norm() / b.norm()).item()

    x16, x24 = torch.randn(3, 3, 16, 16), torch.randn(3, 3, 24, 24)
    with torch.no_grad():
        assert relative(dynamic(x16), static16(x16)) < 1e-5
        out, reference = dynamic(x24), static24(x24)
        assert out.shape == (3, 10) and relative(out, reference) < 1e-5, relative(out, reference)
        static24.backbone.pos_embed.copy_(torch.cat([pos[:, :1], pos[:, 1:].repeat(1, 3, 1)[:, :36]], 1))
        assert relative(static24(x24), reference) > 1e-3  # another 6x6 table moves the logits 100x the tolerance


# --- every mixer with every position option ----------------------------------------------------------------


@pytest.mark.parametrize(("mixer", "position"), list(itertools.product(MIXERS, POSITIONS)))
def test_mixer_and_position_compose_train_and_run_in_bf16(mixer: str, position: str) -> None:
    overrides = [f"model/mixer={mixer}", f"model/pos_embed={position}"]
    if mixer in NO_QK and position.startswith("rope"):
        with pytest.raises(Exception) as info:  # Hydra wraps it; the CLI unwraps it (find_config_error)
            build(overrides)
        error = find_config_error(info.value)
        assert error is not None and f"model/pos_embed={position}" in str(error) and "model/mixer=fnet" in str(error)
        assert type(build([f"model/mixer={mixer}"]).backbone.blocks[0].attn).__name__ in str(error)
        return
    torch.manual_seed(0)
    model = build(overrides)
    x = torch.randn(4, 3, 16, 16)
    logits = model(x)
    assert logits.shape == (4, 10)
    torch.nn.functional.cross_entropy(logits, torch.arange(4)).backward()
    no_grad = [n for n, p in model.named_parameters() if p.grad is None or not p.grad.abs().sum() > 0]
    # MLP-Mixer's token-mixing fc2 bias adds a per-token constant to all channels, which every following
    # LayerNorm removes: its gradient is zero up to rounding (a property of the ViX/MLP-Mixer code, kept for
    # parameter parity), so it is exempt here
    assert [n for n in no_grad if not (mixer == "mlp_mixer" and n.endswith("attn.fc2.bias"))] == []
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = model(x)
    assert out.dtype == torch.bfloat16 and torch.isfinite(out).all()


# --- pre-trained timm weights load into the attention mixers ----------------------------------------------

NEW_TENSORS = {  # what each kernel adds to timm's attention, per block
    "softmax": set(),
    "performer": set(),  # its random features are a buffer that a timm state dict may omit
    "nystrom": {"attn.kernel.res_conv.weight"},
    "linformer": {"attn.kernel.proj_k", "attn.kernel.proj_v"},
}


@pytest.mark.parametrize("mixer", sorted(NEW_TENSORS))
def test_timm_vit_weights_load_strictly_into_attention_mixers(mixer: str, tmp_path: Path) -> None:
    torch.manual_seed(0)
    stock = create_backbone(
        "vit_tiny_patch16_224", 10, img_size=16, patch_size=4, embed_dim=32, depth=2, num_heads=2, mlp_ratio=2.0
    )
    weights = tmp_path / "vit.pt"
    torch.save(stock.state_dict(), weights)
    fresh = build(["~model/stem", f"model/mixer={mixer}"])
    missing, unexpected = fresh.backbone.load_state_dict(torch.load(weights, weights_only=True), strict=False)
    assert unexpected == []
    assert set(missing) == {f"blocks.{i}.{name}" for i in range(2) for name in NEW_TENSORS[mixer]}
    # the same file through the config (model.backbone.weights=file:...) gives the same tensors
    loaded = build(["~model/stem", f"model/mixer={mixer}", f"model.backbone.weights=file:{weights}"])
    for name, tensor in stock.state_dict().items():
        torch.testing.assert_close(loaded.backbone.state_dict()[name], tensor, rtol=0, atol=0)
    if mixer == "softmax":  # and with the exact kernel the model is the stock timm model
        x = torch.randn(2, 3, 16, 16)
        torch.testing.assert_close(loaded.eval()(x), stock.eval()(x), rtol=0, atol=1e-5)
