"""The options behind the ViX code presets: LayerNorm eps, the attention output's own dropout, RoPE's table dtype."""

from __future__ import annotations

import pytest
import torch
from hydra.utils import instantiate
from torch import nn

from conftest import compose_cfg
from vitlab.errors import ConfigError, find_config_error

SMALL = ["data.img_size=16", "model.backbone.patch_size=4", "model.backbone.embed_dim=32", "model.backbone.depth=2"]
SMALL += ["model.backbone.num_heads=2", "~model/stem"]


def build(*overrides: str) -> nn.Module:
    return instantiate(compose_cfg([*SMALL, *overrides]).model, num_classes=10)


def test_norm_eps_sets_every_layer_norm_and_null_keeps_timms() -> None:
    epsilons = {m.eps for m in build("model.backbone.norm_eps=1e-5").modules() if isinstance(m, nn.LayerNorm)}
    assert epsilons == {1e-5}
    assert {m.eps for m in build().modules() if isinstance(m, nn.LayerNorm)} == {1e-6}


def test_mixer_proj_drop_replaces_only_the_attention_outputs_dropout() -> None:
    vit = build("model/mixer=nystrom", "model.backbone.proj_drop_rate=0.25", "model.mixer.proj_drop=0.0").backbone
    assert all(b.attn.proj_drop.p == 0.0 and b.mlp.drop1.p == b.mlp.drop2.p == 0.25 for b in vit.blocks)
    vit = build("model/mixer=nystrom", "model.backbone.proj_drop_rate=0.25").backbone  # null: the backbone's rate
    assert all(b.attn.proj_drop.p == 0.25 for b in vit.blocks)


def test_rope_table_dtype_float32_rounds_like_the_code_and_model_does_not() -> None:
    torch.manual_seed(0)
    rope64 = build("model/pos_embed=rope1d").backbone.blocks[0].attn.rope
    rope32 = build("model/pos_embed=rope1d", "model.pos_embed.table_dtype=float32").backbone.blocks[0].attn.rope
    q = torch.randn(1, 2, 1100, 16, dtype=torch.float64)
    exact, rounded = rope64(q, q)[0], rope32(q, q)[0]
    gap = (exact - rounded).abs().max().item()
    assert 1e-9 < gap < 1e-3  # float32 angles at positions up to 1099
    assert torch.equal(rope32(q.float(), q.float())[0], rope64(q.float(), q.float())[0])  # float32 models: same


@pytest.mark.parametrize(
    ("override", "key"),
    [
        ("model.backbone.norm_eps=0", "model.backbone.norm_eps=0"),
        ("model.mixer.proj_drop=1.5", "model.mixer.proj_drop=1.5"),
        ("model.pos_embed.table_dtype=float16", "model.pos_embed.table_dtype='float16'"),
    ],
)
def test_bad_values_name_the_key(override: str, key: str) -> None:
    extra = {"model.mixer": ["model/mixer=nystrom"], "model.pos_embed": ["model/pos_embed=rope1d"]}
    groups = next((v for k, v in extra.items() if override.startswith(k)), [])
    with pytest.raises(Exception) as info:
        build(*groups, override)
    error = find_config_error(info.value)
    assert isinstance(error, ConfigError) and key in str(error)
