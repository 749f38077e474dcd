"""EIT: official parameter counts, token grids, the decreasing-convolution split, and the CLI presets."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from hydra.utils import instantiate

from conftest import compose_cfg, run_cli
from vitlab.errors import ConfigError
from vitlab.models.geometry import TokenGeometry
from vitlab.models.mixers.eit import DecreasingConvMixer, attention_channels
from vitlab.models.mixers.softmax import SoftmaxKernel
from vitlab.models.stems.eit import EITStem
from vitlab.training.cost import macs_breakdown

# docs/papers/eit.md#numbers-we-check-against: official training logs (`n_parameters`, 1000 classes) and the
# per-layer conv channels c_l
OFFICIAL = {
    "eit_mini": (3_512_750, [200, 150, 100, 50, 0]),
    "eit_tiny": (8_927_230, [290, 250, 210, 170, 130, 90, 50, 0]),
    "eit_base": (15_972_280, [368, 320, 288, 240, 208, 160, 128, 80, 48, 0]),
    "eit_large": (25_305_592, [432, 400, 352, 320, 272, 240, 208, 160, 128, 80, 48, 0]),
}
# GMACs at 224 px: the official README's "#FLOPs" (ptflops, attention matrix products excluded) and
# our analytic count with them (docs/papers/eit.md#numbers-we-check-against)
OFFICIAL_GMACS = {
    "eit_mini": (1.73, 1.926),
    "eit_tiny": (3.84, 4.213),
    "eit_base": (6.52, 7.073),
    "eit_large": (10.0, 10.766),
}


def build(preset: str, img: int, classes: int, extra: list[str] | None = None) -> torch.nn.Module:
    return instantiate(
        compose_cfg([f"model={preset}", f"data.img_size={img}", *(extra or [])]).model, num_classes=classes
    )


@pytest.mark.parametrize("preset", sorted(OFFICIAL))
def test_presets_have_the_official_parameters_split_and_macs(preset: str) -> None:
    model = build(preset, 224, 1000)
    params, conv_channels = OFFICIAL[preset]
    assert sum(p.numel() for p in model.parameters()) == params
    blocks = model.backbone.blocks
    assert [b.attn.conv_channels for b in blocks] == conv_channels
    dim = model.backbone.embed_dim
    assert [b.attn.attn_channels for b in blocks] == [dim - c for c in conv_channels]
    assert model.backbone.pos_embed is None and model.backbone.patch_embed.num_patches == 361
    macs = macs_breakdown(model, 224)
    without, with_attention = OFFICIAL_GMACS[preset]
    assert macs["macs_no_attn"] / 1e9 == pytest.approx(without, rel=5e-3)
    assert macs["macs"] / 1e9 == pytest.approx(with_attention, rel=1e-3)


@pytest.mark.parametrize(
    ("img", "k", "s", "p", "tokens"), [(224, 16, 4, 3, 361), (32, 3, 1, 4, 64), (96, 16, 4, 3, 64)]
)
def test_eit_stem_token_count(img: int, k: int, s: int, p: int, tokens: int) -> None:
    stem = EITStem((img, img), 24, k, s, p)
    out = stem(torch.randn(2, 3, img, img))
    assert out.shape == (2, tokens, 24) and stem.num_patches == tokens


def test_learned_position_embedding_fits_the_true_grid() -> None:
    """The official code sizes pos_embed for img // (s·p) = 18² tokens at 224 px; the grid is 19²."""
    model = build("eit_mini", 224, 10, ["model/pos_embed=learned"])
    assert model.backbone.pos_embed.shape == (1, 362, 250)
    assert model(torch.randn(1, 3, 224, 224)).shape == (1, 10)


def mixer(layer: int = 0, depth: int = 4, kernel=SoftmaxKernel) -> DecreasingConvMixer:
    geo = TokenGeometry(dim=32, num_heads=4, depth=depth, grid_size=(5, 5), num_prefix_tokens=1)
    return DecreasingConvMixer(geo, layer, kernel).eval()


def test_conv_part_is_a_depthwise_convolution_of_the_grid_and_spares_the_class_token() -> None:
    torch.manual_seed(0)
    m = mixer(layer=1)
    c = m.conv_channels
    assert c == 32 - attention_channels(32, 4, 4, 1) == 16
    x = torch.randn(2, 26, 32)
    out = m(x)
    grid = x[:, 1:, :c].transpose(1, 2).reshape(2, c, 5, 5)
    direct = F.conv2d(grid, m.conv.weight, padding=1, groups=c).flatten(2).transpose(1, 2)
    torch.testing.assert_close(out[:, 1:, :c], direct, rtol=0, atol=1e-6)
    torch.testing.assert_close(out[:, :1, :c], x[:, :1, :c], rtol=0, atol=0)  # class token: passed through
    torch.testing.assert_close(out[..., c:], m.attn(x[..., c:]), rtol=0, atol=0)  # attention on the rest


def test_last_block_is_pure_attention() -> None:
    m = mixer(layer=3)
    assert m.conv is None and m.attn_channels == 32


def test_non_square_grid_is_refused() -> None:
    geo = TokenGeometry(dim=32, num_heads=4, depth=4, grid_size=(4, 6), num_prefix_tokens=1)
    with pytest.raises(ConfigError, match="square token grid"):
        DecreasingConvMixer(geo, 0, SoftmaxKernel)


@pytest.mark.parametrize("kernel", ["softmax", "nystrom", "performer"])
def test_eit_with_any_kernel_trains_keeps_the_split_and_reaches_every_parameter(kernel: str) -> None:
    torch.manual_seed(0)
    small = ["model.backbone.embed_dim=40", "model.backbone.depth=3", "model.backbone.num_heads=4"]
    model = build("eit_cifar", 32, 10, [f"model/mixer/kernel={kernel}", *small])
    assert [b.attn.conv_channels for b in model.backbone.blocks] == [28, 16, 0]  # same split for every kernel
    assert all(type(b.attn.attn.kernel).__name__.lower().startswith(kernel) for b in model.backbone.blocks)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    before = [p.detach().clone() for p in model.parameters()]
    loss = F.cross_entropy(model.train()(torch.randn(4, 3, 32, 32)), torch.arange(4))
    loss.backward()
    no_grad = [n for n, p in model.named_parameters() if p.grad is None or not p.grad.abs().sum() > 0]
    assert no_grad == []
    opt.step()
    assert all(not torch.equal(a, b) for a, b in zip(before, model.parameters(), strict=True))


@pytest.mark.slow
def test_cli_eit_cifar_on_digits_and_eit_mini_on_224px_fake_data(tmp_path) -> None:
    digits = run_cli(
        "train",
        [
            "model=eit_cifar",
            "data=digits",
            "trainer.max_epochs=1",
            "+trainer.limit_train_batches=3",
            "+trainer.limit_val_batches=2",
            "+trainer.limit_test_batches=2",
            "trainer.enable_progress_bar=false",
        ],
        tmp_path / "digits",
    )
    assert digits.returncode == 0, digits.stderr[-3000:]
    (result,) = digits.results()
    assert result["status"] == "ok" and result["params/total"] == 3_079_010  # docs/papers/eit.md#presets
    fake = run_cli(
        "train",
        ["model=eit_mini", "data=fake", "data.img_size=224", "debug=fdr", "data.batch_size=4"],
        tmp_path / "fake",
    )
    assert fake.returncode == 0, fake.stderr[-3000:]
    # the run is the official EIT-Mini at 224 px: its parameters with a 10-class head (the logs count 1000
    # classes, (D + 1) x 990 more), its MACs at the official README's precision (ours with and without the
    # attention products), one epoch of one batch (fast_dev_run), and the test loss of a model one step from its
    # initialisation: chance, ln(10) within 5 %
    (result,) = fake.results()
    dim = compose_cfg(["model=eit_mini"]).model.backbone.embed_dim
    assert result["status"] == "ok" and result["epochs"] == 1 and result["world_size"] == 1
    assert result["params/total"] == OFFICIAL["eit_mini"][0] - (dim + 1) * (1000 - 10)
    official, ours = OFFICIAL_GMACS["eit_mini"]
    assert round(result["cost/macs_no_attn_per_image"] / 1e9, 2) == official, result["cost/macs_no_attn_per_image"]
    assert round(result["cost/macs_per_image"] / 1e9, 3) == ours, result["cost/macs_per_image"]
    assert abs(result["test/loss"] - math.log(10)) < 0.05 * math.log(10), result["test/loss"]
