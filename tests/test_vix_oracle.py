"""Every `experiment=vix/cifar10/*` preset computes what the ViX code's model computes.

Each preset is built at its real size (1025 tokens, dim 128, depth 4), its tensors spread out so that every
term matters, and run in float64, eval mode, beside the independent oracle of `vix_code_oracle` on the same
tensors (every one of them read): the logits must agree within 1e-10. Our corrections (masked Nyström
padding, per-sample scalings) must differ from the code, and the Nyström paddings agree where none is needed.
"""

from __future__ import annotations

import pytest
import torch
from hydra.utils import instantiate
from torch import nn

from conftest import CONFIGS, compose_cfg
from vix_code_oracle import CODE_MODELS, Tensors, code_logits, mixer_logits

TOLERANCE = 1e-10
PRESETS = sorted(p.stem for p in (CONFIGS / "experiment/vix/cifar10").glob("*.yaml") if not p.name.startswith("_"))


def build(preset: str, *overrides: str, seed: int = 0, folder: str = "cifar10", classes: int = 10) -> nn.Module:
    """The preset's model in float64, eval mode, with tensors drawn so that attention is far from uniform."""
    cfg = compose_cfg([f"experiment=vix/{folder}/{preset}", *overrides])
    torch.manual_seed(seed)
    model = instantiate(cfg.model, num_classes=classes).double().eval()
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith(("pos_embed", "cls_token")):
                p.normal_()  # N(0, 1), as the code draws them
            elif "proj_k" in name:
                continue  # Linformer's E keeps its U(±1/√k) init
            elif p.ndim == 1 and "norm" in name:
                p.copy_(1 + 0.2 * torch.randn_like(p) if name.endswith("weight") else 0.2 * torch.randn_like(p))
            elif p.ndim == 1:
                p.normal_(0, 0.1)  # biases
            else:
                p.normal_(0, p[0].numel() ** -0.5)  # unit-variance outputs for unit-variance inputs
    return model


def images(batch: int = 2, size: int = 32) -> torch.Tensor:
    return torch.randn(batch, 3, size, size, generator=torch.Generator().manual_seed(7), dtype=torch.float64)


def max_gap(model: nn.Module, preset: str, img: torch.Tensor) -> float:
    """max |Δlogit| between the model and the code's model on the model's own tensors."""
    tensors = Tensors(model.state_dict())
    with torch.no_grad():
        code = code_logits(tensors, img, CODE_MODELS[preset], depth=len(model.backbone.blocks))
        gap = (model(img) - code).abs().max().item()
    assert not tensors.unused(), f"the oracle ignored {sorted(tensors.unused())}"
    return gap


def test_every_cifar10_preset_has_an_oracle() -> None:
    assert sorted(CODE_MODELS) == PRESETS


@pytest.mark.parametrize("preset", PRESETS)
def test_preset_computes_what_the_code_computes(preset: str) -> None:
    model = build(preset)
    batch = 2 if CODE_MODELS[preset].mixer in ("nystrom", "performer") else 1  # batch-coupled: pinv, FAVOR+ max
    gap = max_gap(model, preset, images(batch))
    assert gap <= TOLERANCE, f"{preset}: max |Δlogit| = {gap:.3g}"
    assert dropouts(model.backbone) == code_dropouts(preset, model.backbone)


@pytest.mark.parametrize("preset", ["mlp_mixer", "hybrid_mlp_mixer"])
def test_tiny_imagenet_mixer_computes_what_the_code_computes(preset: str) -> None:
    model = build(preset, folder="tiny_imagenet", classes=200)
    img, tensors = images(2, 64), Tensors(model.state_dict())
    with torch.no_grad():
        gap = (model(img) - mixer_logits(tensors, img, conv=preset.startswith("hybrid"))).abs().max().item()
    assert not tensors.unused() and gap <= TOLERANCE, f"{preset}: max |Δlogit| = {gap:.3g}"
    assert dropouts(model.backbone) == {}


@pytest.mark.parametrize(
    ("preset", "correction"),
    [
        ("vin", ["model.mixer.kernel.padding=masked"]),  # pads out of the landmark means and softmaxes
        ("vin", ["model.mixer.kernel.pinv_init=matrix"]),  # per-matrix pinv scaling: batch-independent
        ("vip", ["model.mixer.kernel.stabiliser=per_head"]),  # per-sample key maximum: batch-independent
        ("vit", ["model.backbone.norm_eps=1e-6"]),  # timm's LayerNorm eps
        ("vit_rope", ["model.pos_embed.table_dtype=model"]),  # the rotation in float64
    ],
)
def test_each_option_of_the_code_is_seen_by_the_oracle(preset: str, correction: list[str]) -> None:
    """The check has teeth: undoing any one of the code's settings moves the logits well past the tolerance."""
    assert max_gap(build(preset, "model.backbone.depth=2", *correction), preset, images()) > 1e3 * TOLERANCE


def test_nystrom_paddings_agree_where_the_length_needs_none() -> None:
    """1025 = 41 x 25 tokens: with 41 landmarks nothing is padded, so masked and official are one function
    (and both the code's); with the preset's 64 landmarks (63 pads) they differ."""
    img = images()
    with torch.no_grad():
        masked, official = (
            build("vin", "model.mixer.kernel.num_landmarks=41", f"model.mixer.kernel.padding={p}")(img)
            for p in ("masked", "official")
        )
        torch.testing.assert_close(masked, official, rtol=0, atol=0)
        padded = [build("vin", f"model.mixer.kernel.padding={p}")(img) for p in ("masked", "official")]
    assert (padded[0] - padded[1]).abs().max() > 1e-3


@pytest.mark.parametrize("preset", ["vin_rope", "vip"])
def test_gradients_equal_the_codes(preset: str) -> None:
    """Training follows the code too: the official padding with RoPE after padding, and FAVOR+'s maxima that
    the code does not detach, give the same parameter gradients in float64 (one block, for time)."""
    model = build(preset, "model.backbone.depth=1")
    img = images()
    model(img).square().sum().backward()
    leaves = {k: v.detach().clone().requires_grad_(v.is_floating_point()) for k, v in model.state_dict().items()}
    tensors = Tensors(leaves, detach=False)
    code_logits(tensors, img, CODE_MODELS[preset], depth=1).square().sum().backward()
    for name, p in model.named_parameters():
        torch.testing.assert_close(p.grad, tensors.state[name].grad, rtol=1e-9, atol=1e-9, msg=name)


# dropout after the attention's output projection, in the MLP, after the embedding (the code's values)
CODE_DROPOUT = {name: (0.0, 0.0, 0.0) for name in CODE_MODELS}
CODE_DROPOUT.update(vit=(0.25, 0.25, 0.0), vin=(0.0, 0.25, 0.0), hybrid_vin=(0.0, 0.25, 0.0))
CODE_DROPOUT.update(vin_rope=(0.0, 0.0, 0.5), hybrid_vin_rope=(0.0, 0.5, 0.5))


def dropouts(vit: nn.Module) -> dict[str, float]:
    """Every active dropout of the backbone by name (attention maps included: the kernels' `attn_drop`)."""
    found = {name: m.p for name, m in vit.named_modules() if isinstance(m, nn.Dropout) and m.p > 0}
    maps = {
        f"blocks.{i}.attn.kernel": getattr(b.attn.kernel, "attn_drop", 0.0)
        for i, b in enumerate(vit.blocks)
        if hasattr(b.attn, "kernel")
    }
    return found | {k: v for k, v in maps.items() if v > 0}


def code_dropouts(preset: str, vit: nn.Module) -> dict[str, float]:
    """Where the code drops: after the attention's output layer, twice in the MLP, after the embedding."""
    attn_out, mlp, emb = CODE_DROPOUT[preset]
    expected = {"pos_drop" if vit.pos_embed is not None else "norm_pre.0": emb}
    for i in range(len(vit.blocks)):
        expected |= {f"blocks.{i}.mlp.drop1": mlp, f"blocks.{i}.mlp.drop2": mlp, f"blocks.{i}.attn.proj_drop": attn_out}
    return {k: v for k, v in expected.items() if v > 0}
