"""Backbone construction, slot composition and weight loading, checked against timm itself."""

from __future__ import annotations

import copy
import functools

import pytest
import timm
import torch
from safetensors.torch import save_file
from timm.layers import resample_abs_pos_embed
from torch import nn

from vitlab.errors import ConfigError
from vitlab.models.adapters.pos_embed import remove_pos_embed
from vitlab.models.backbone import create_backbone
from vitlab.models.build import build_classifier
from vitlab.models.geometry import geometry_of
from vitlab.models.heads.linear import LinearHead
from vitlab.models.seams import SeamError, check_seams
from vitlab.models.summary import param_counts

SMALL = dict(img_size=16, patch_size=4, embed_dim=32, depth=2, num_heads=2, mlp_ratio=2.0)


def small(**kw) -> functools.partial:
    return functools.partial(create_backbone, "vit_tiny_patch16_224", **{**SMALL, **kw})


def vit_param_formula(dim: int, depth: int, mlp: int, patch: int, tokens: int, classes: int) -> int:
    """Parameters of a pre-LN ViT with qkv bias, class token, learned position embedding, linear head."""
    block = 2 * 2 * dim + (3 * dim * dim + 3 * dim) + (dim * dim + dim) + (dim * mlp + mlp) + (mlp * dim + dim)
    embed = 3 * patch * patch * dim + dim + dim + (tokens + 1) * dim  # patch proj, cls token, pos embed
    return embed + depth * block + 2 * dim + dim * classes + classes


def test_backbone_sizes_match_the_vit_formula() -> None:
    model = build_classifier(small(), num_classes=10)
    assert param_counts(model)["params/total"] == vit_param_formula(32, 2, 64, 4, 16, 10)
    assert geometry_of(model.backbone).grid_size == (4, 4) and geometry_of(model.backbone).seq_len == 17


def test_default_preset_size() -> None:
    from hydra.utils import instantiate

    from conftest import compose_cfg

    linear = vit_param_formula(128, 6, 256, 4, 64, 10)
    stock = instantiate(compose_cfg(["~model/stem"]).model, num_classes=10)
    assert param_counts(stock)["params/total"] == linear == 811_146
    # the default conv stem: 3x3 convs 3->32->64->128 (with biases) instead of the 4x4 patch projection
    conv_stem = (3 * 9 * 32 + 32) + (32 * 9 * 64 + 64) + (64 * 9 * 128 + 128)
    default = instantiate(compose_cfg().model, num_classes=10)
    assert param_counts(default)["params/total"] == linear - (3 * 16 * 128 + 128) + conv_stem == 898_122


def test_classifier_without_head_slot_is_the_stock_timm_model() -> None:
    torch.manual_seed(0)
    ref = timm.create_model("vit_tiny_patch16_224", num_classes=5, **SMALL).eval()
    model = build_classifier(small(), num_classes=5).eval()
    model.backbone.load_state_dict(ref.state_dict())
    x = torch.randn(2, 3, 16, 16)
    torch.testing.assert_close(model(x), ref(x), rtol=0, atol=0)


def test_linear_head_equals_timm_head() -> None:
    ref = timm.create_model("vit_tiny_patch16_224", num_classes=5, **SMALL).eval()
    model = build_classifier(small(), num_classes=5, head=functools.partial(LinearHead, pool="token")).eval()
    model.backbone.load_state_dict({k: v for k, v in ref.state_dict().items() if not k.startswith("head.")})
    model.head.copy_from_timm(ref.head)
    x = torch.randn(2, 3, 16, 16)
    torch.testing.assert_close(model(x), ref(x))
    assert param_counts(model)["params/trainable_no_head"] == param_counts(model)["params/trainable"] - (32 * 5 + 5)


def test_without_position_embedding_the_class_token_ignores_patch_order() -> None:
    """No position information: permuting patches leaves the class-token output unchanged."""
    model = build_classifier(small(patch_size=8), num_classes=3, pos_embed=remove_pos_embed).eval()
    assert model.backbone.pos_embed is None and "backbone.pos_embed" not in dict(model.named_parameters())
    x = torch.randn(1, 3, 16, 16)
    swapped = x.clone()
    swapped[..., :8, :8], swapped[..., 8:, 8:] = x[..., 8:, 8:], x[..., :8, :8]  # swap two 8x8 patches
    torch.testing.assert_close(model(x), model(swapped), atol=1e-5, rtol=1e-5)
    with_pos = build_classifier(small(patch_size=8), num_classes=3).eval()
    assert not torch.allclose(with_pos(x), with_pos(swapped), atol=1e-5)


def test_seams_are_checked() -> None:
    check_seams(timm.create_model("vit_tiny_patch16_224", **SMALL))
    with pytest.raises(SeamError):
        check_seams(nn.Linear(2, 2))
    broken = timm.create_model("vit_tiny_patch16_224", **SMALL)
    del broken.blocks[0].ls1
    with pytest.raises(SeamError, match="ls1"):
        check_seams(broken)


def test_sizes_are_validated() -> None:
    with pytest.raises(ConfigError, match=r"data\.img_size=18"):
        small(img_size=18)(num_classes=2)
    with pytest.raises(ConfigError, match="num_heads"):
        small(num_heads=3)(num_classes=2)
    with pytest.raises(ConfigError, match="not a timm model"):
        create_backbone("vit_nonexistent", num_classes=2)
    with pytest.raises(ConfigError, match="Allowed values"):
        small(weights="http://x")(num_classes=2)


# --- weights: file:<path> -----------------------------------------------------------------------------


def _source_vit(classes: int = 10) -> nn.Module:
    torch.manual_seed(1)
    return timm.create_model("vit_tiny_patch16_224", num_classes=classes, **SMALL)


@pytest.mark.parametrize("fmt", ["pt", "safetensors", "lightning"])
def test_file_weights_of_another_class_count_drop_the_head(tmp_path, fmt: str) -> None:
    src = _source_vit(classes=10)
    state = src.state_dict()
    path = tmp_path / f"w.{'safetensors' if fmt == 'safetensors' else 'pt'}"
    if fmt == "safetensors":
        save_file(state, str(path))
    elif fmt == "lightning":  # what vitlab-train writes: keys under model.backbone., next to other entries
        torch.save({"state_dict": {f"model.backbone.{k}": v for k, v in state.items()}, "epoch": 3}, path)
    else:
        torch.save(state, path)
    model = build_classifier(small(weights=f"file:{path}"), num_classes=4)
    loaded = model.backbone.state_dict()
    for key, value in state.items():
        if key.startswith("head."):
            assert loaded[key].shape[0] == 4  # new head, new size
        else:
            torch.testing.assert_close(loaded[key], value, rtol=0, atol=0)


def test_file_weights_with_same_class_count_keep_the_head(tmp_path) -> None:
    src = _source_vit(classes=4)
    torch.save(src.state_dict(), tmp_path / "w.pt")
    model = build_classifier(small(weights=f"file:{tmp_path / 'w.pt'}"), num_classes=4).eval()
    x = torch.randn(2, 3, 16, 16)
    torch.testing.assert_close(model(x), src.eval()(x))


def test_file_weights_resample_position_embedding_for_another_image_size(tmp_path) -> None:
    src = _source_vit()
    torch.save(src.state_dict(), tmp_path / "w.pt")
    model = build_classifier(small(img_size=32, weights=f"file:{tmp_path / 'w.pt'}"), num_classes=10)
    expected = resample_abs_pos_embed(src.pos_embed.detach(), new_size=(8, 8), old_size=(4, 4), num_prefix_tokens=1)
    torch.testing.assert_close(model.backbone.pos_embed.detach(), expected)


def test_bad_weight_files_are_clear_errors(tmp_path) -> None:
    (tmp_path / "corrupt.pt").write_bytes(b"not a checkpoint at all")
    with pytest.raises(ConfigError, match="could not be read"):
        small(weights=f"file:{tmp_path / 'corrupt.pt'}")(num_classes=2)
    with pytest.raises(ConfigError, match="no such file"):
        small(weights=f"file:{tmp_path / 'missing.pt'}")(num_classes=2)
    other = copy.deepcopy(_source_vit()).state_dict()
    other = {k: v for k, v in other.items() if not k.startswith("blocks.1.")}
    torch.save(other, tmp_path / "shallow.pt")
    with pytest.raises(ConfigError, match=r"missing: blocks\.1\."):
        small(weights=f"file:{tmp_path / 'shallow.pt'}")(num_classes=2)


def test_hub_weights_must_match_the_architecture() -> None:
    with pytest.raises(ConfigError, match="architecture"):
        small(weights="hub:vit_small_patch16_224.augreg_in21k")(num_classes=2)
