"""Attention read off whole models (vitlab.analysis.attention_maps), the rollout, and `vitlab-eval analyse=attention`.

A block's recomputed matrices must reproduce that block's own attention output in the model's forward pass
(captured by a hook, ≤ 1e-6 in fp32); maps index the class token's row or the mean over queries; the rollout is
checked on a two-block example computed by hand (Abnar & Zuidema 2020, eq. 1).
"""

from __future__ import annotations

import functools
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from hydra.utils import instantiate
from omegaconf import open_dict
from timm.models.vision_transformer import VisionTransformer

from conftest import compose_cfg
from helpers.train_in_process import train_in_process
from vitlab.analysis.attention_maps import (
    attention_module,
    backbone_of,
    model_attention,
    no_attention_reason,
    relative_frobenius,
    row_entropy,
    row_tv_distance,
    token_maps,
)
from vitlab.analysis.rollout import attention_rollout
from vitlab.models.mixers.install import install_mixer
from vitlab.models.mixers.nystrom import NystromKernel

TINY = ["tiny=model"]  # 16 px, patch 4: a 4 × 4 grid + class token, 2 blocks of 2 heads


def build(extra: list[str]) -> torch.nn.Module:
    torch.manual_seed(0)
    if extra == ["registers"]:  # class token + 2 register tokens (no config key for them): timm's ViT directly
        vit = VisionTransformer(img_size=16, patch_size=4, embed_dim=32, depth=2, num_heads=2, reg_tokens=2)
        return install_mixer(vit, kernel=functools.partial(NystromKernel, num_landmarks=4)).eval()
    stem = [] if any(e.startswith("model=eit") for e in extra) else ["~model/stem"]  # timm's patch embedding
    return instantiate(compose_cfg([*TINY, *stem, *extra]).model, num_classes=10).eval()


MODELS = {
    "timm-softmax": [],  # timm's own Attention (no mixer slot)
    "softmax": ["model/mixer=softmax"],
    "nystrom": ["model/mixer=nystrom", "model.mixer.kernel.num_landmarks=4"],  # 17 tokens: padded to 20
    "performer": ["model/mixer=performer"],
    "linformer-rope": ["model/mixer=linformer", "model.mixer.kernel.k=8", "model/pos_embed=rope1d"],
    "no-class-token": ["model/mixer=performer", "+model.backbone.class_token=false", "+model.backbone.global_pool=avg"],
    "registers": ["registers"],
    # EIT: overlapping conv 3/1 + max-pool 4 stem (16 px -> 4 × 4 tokens), no position embedding
    "eit": [
        "model=eit_cifar",
        "model.backbone.embed_dim=32",
        "model.backbone.depth=2",
        "model.backbone.num_heads=2",
        "model/mixer/kernel=nystrom",
        "model.mixer.kernel.num_landmarks=4",
    ],
}


@pytest.mark.parametrize("name", sorted(MODELS))
def test_each_blocks_matrices_reproduce_its_attention_output_in_the_model(name: str) -> None:
    model = build(MODELS[name])
    backbone = backbone_of(model)
    outputs: dict[int, torch.Tensor] = {}
    for i, block in enumerate(backbone.blocks):
        attn = attention_module(block.attn)
        target = block.attn.attn if hasattr(block.attn, "conv_channels") else block.attn  # EIT: attention channels
        target.register_forward_hook(lambda m, args, out, i=i: outputs.__setitem__(i, out))
        assert attn is not None
    images = torch.randn(3, 3, 16, 16)
    maps = model_attention(model, images)
    model(images)  # once more, with the output hooks recording
    prefix = backbone.num_prefix_tokens
    assert maps.num_prefix_tokens == prefix and maps.tokens == 16 + prefix and maps.grid == (4, 4)
    assert maps.has_class_token == (name != "no-class-token")
    for i, block in enumerate(maps.blocks):
        attn = attention_module(backbone.blocks[i].attn)
        x = _inputs(model, backbone, i, images)
        _, _, v = attn.qkv_heads(x)
        mixed = block.implied @ v + (block.residual @ v if block.residual is not None else 0)
        out = attn.proj(mixed.transpose(1, 2).reshape(3, maps.tokens, -1))
        assert float((out - outputs[i]).detach().abs().max()) <= 1e-6 * max(1.0, float(outputs[i].abs().max()))
        torch.testing.assert_close(block.softmax.sum(-1), torch.ones(3, maps.heads, maps.tokens), rtol=0, atol=1e-6)
        grid = token_maps(block.implied, maps.num_prefix_tokens, maps.has_class_token, maps.grid)
        assert grid.shape == (3, maps.heads, 4, 4)  # the class token's row, or the mean over patch queries
        if "softmax" in name:
            torch.testing.assert_close(block.implied, block.softmax, rtol=0, atol=1e-6)
            assert row_tv_distance(block.implied, block.softmax) < 1e-6
    assert maps.mixer == {"timm-softmax": "softmax", "eit": "eit+nystrom", "linformer-rope": "linformer",
                          "no-class-token": "performer", "registers": "nystrom"}.get(name, name)  # fmt: skip


def _inputs(model: torch.nn.Module, backbone, i: int, images: torch.Tensor) -> torch.Tensor:
    """The tokens block i's attention receives (its norm1 output; EIT: the attention channels of it)."""
    captured = {}
    mixer = backbone.blocks[i].attn
    target = mixer.attn if hasattr(mixer, "conv_channels") else mixer
    handle = target.register_forward_pre_hook(lambda m, args: captured.__setitem__("x", args[0]))
    with torch.no_grad():
        model(images)
    handle.remove()
    return captured["x"]


@pytest.mark.parametrize("mixer", ["fnet", "mlp_mixer"])
def test_mixers_without_attention_say_so(mixer: str) -> None:
    model = build([f"model/mixer={mixer}"])
    reason = no_attention_reason(backbone_of(model))
    assert reason is not None and "without an attention matrix" in reason
    with pytest.raises(ValueError, match="without an attention matrix"):
        model_attention(model, torch.randn(1, 3, 16, 16))


def test_token_maps_take_the_class_row_or_the_mean_over_patch_queries() -> None:
    grid, prefix = (2, 3), 2  # class token + one register
    n = prefix + 6
    A = torch.rand(2, 3, n, n)
    maps = token_maps(A, prefix, True, grid)
    assert maps.shape == (2, 3, 2, 3)
    assert maps[1, 2, 1, 0] == A[1, 2, 0, prefix + 1 * 3 + 0]  # row 1, column 0 of the grid
    pooled = token_maps(A, prefix, False, grid)
    assert pooled.shape == (2, 3, 2, 3)
    torch.testing.assert_close(pooled[0, 1, 0, 2], A[0, 1, prefix:, prefix + 2].mean())
    no_prefix = token_maps(A[..., 2:, 2:], 0, False, grid)
    torch.testing.assert_close(no_prefix, pooled)  # registers' rows and columns never enter the map


def test_rollout_of_two_blocks_by_hand() -> None:
    """Head means [[.8,.2],[.4,.6]] then [[.5,.5],[0,1]]; ½(Ā + I) per block: [[.9,.1],[.2,.8]] and
    [[.75,.25],[0,1]]; the later block on the left: [[.725,.275],[.2,.8]]."""
    first = torch.tensor([[[[1.0, 0.0], [0.4, 0.6]], [[0.6, 0.4], [0.4, 0.6]]]])  # (1, 2 heads, 2, 2)
    second = torch.tensor([[[[0.5, 0.5], [0.0, 1.0]], [[0.5, 0.5], [0.0, 1.0]]]])
    expected = torch.tensor([[[0.725, 0.275], [0.2, 0.8]]])
    torch.testing.assert_close(attention_rollout([first, second]), expected, rtol=0, atol=1e-6)
    torch.testing.assert_close(attention_rollout([first]), torch.tensor([[[0.9, 0.1], [0.2, 0.8]]]))


def test_rollout_refuses_rows_that_cannot_be_normalised() -> None:
    with pytest.raises(ValueError, match="sums to <= 0"):
        attention_rollout([torch.tensor([[[-2.0, 0.0], [0.5, 0.5]]])])


def test_distances_and_entropy_follow_their_formulas() -> None:
    eye, flip = torch.eye(3)[None], torch.eye(3).flip(-1)[None]
    assert row_tv_distance(eye, eye) == 0 and row_tv_distance(eye, flip) == pytest.approx(2 / 3)  # middle row same
    a, b = torch.rand(2, 4, 5, 5), torch.rand(2, 4, 5, 5)
    expected = np.mean(np.linalg.norm((a - b).numpy(), axis=(-2, -1)) / np.linalg.norm(b.numpy(), axis=(-2, -1)))
    assert relative_frobenius(a, b) == pytest.approx(float(expected), rel=1e-5)
    uniform = torch.full((1, 4, 4), 0.25)
    assert row_entropy(uniform) == pytest.approx(np.log(4)) and row_entropy(eye) == pytest.approx(0, abs=1e-6)
    assert row_entropy(uniform * 2) is None and row_entropy(eye - 0.1 * flip + 0.1 * eye) is None


# --- end to end: vitlab-eval analyse=attention, in this process -------------------------------------------------


def _trained_checkpoint(run_dir: Path, extra: list[str]) -> Path:
    record = train_in_process(run_dir, ["tiny=smoke", "trainer.enable_progress_bar=false", *extra])
    assert record["status"] == "ok", record.get("error")
    return run_dir / "checkpoints" / "last.ckpt"


def _analyse(ckpt: Path, out: Path, extra: list[str]) -> dict:
    from vitlab.cli import eval as eval_cli
    from vitlab.cli.runner import run_task
    from vitlab.compose import compose_config

    args = [f"ckpt_path={ckpt}", "analyse=attention", "trainer.accelerator=cpu", *extra]
    cfg = compose_config("eval", args)
    with open_dict(cfg):
        cfg.paths.output_dir = str(out)
    return run_task(cfg, eval_cli.evaluate)


@pytest.mark.slow  # trains two tiny models end to end (in-process, seconds)
def test_eval_analyse_attention_writes_figures_numbers_or_says_there_is_no_matrix(tmp_path: Path) -> None:
    ckpt = _trained_checkpoint(tmp_path / "nystrom", ["model/mixer=nystrom", "model.mixer.kernel.num_landmarks=4"])
    record = _analyse(ckpt, tmp_path / "eval", ["data.n_images=3"])
    assert record["status"] == "ok", record.get("error")
    figures = sorted(p.name for p in (tmp_path / "eval" / "figures").iterdir())
    assert figures == ["attention_block0.png", "attention_block1.png", "attention_rollout.png"]
    assert all((tmp_path / "eval" / "figures" / f).stat().st_size < 300_000 for f in figures)
    saved = json.loads((tmp_path / "eval" / "results.json").read_text())
    assert saved["attention/mixer"] == "nystrom" and saved["attention/n_images"] == 3
    assert (saved["attention/blocks"], saved["attention/heads"], saved["attention/tokens"]) == (2, 2, 17)
    assert len(saved["attention/tv_to_softmax"]) == 2 and all(d > 0 for d in saved["attention/tv_to_softmax"])
    arrays = np.load(tmp_path / "eval" / "attention" / "attention.npz")
    assert arrays["maps"].shape == (2, 3, 2, 4, 4) and arrays["matrices"].shape == (2, 3, 2, 17, 17)
    assert arrays["images"].shape == (3, 16, 16, 3)

    with pytest.raises(SystemExit) as exit_info:  # a user error: one paragraph, exit status 2
        _analyse(ckpt, tmp_path / "bad", ["data.n_images=0"])
    bad = json.loads((tmp_path / "bad" / "results.json").read_text())
    assert exit_info.value.code == 2 and bad["status"] == "failed" and "data.n_images=0" in bad["error"]

    fnet = _trained_checkpoint(tmp_path / "fnet", ["model/mixer=fnet"])
    record = _analyse(fnet, tmp_path / "fnet_eval", [])
    assert record["status"] == "ok" and "without an attention matrix" in record["attention/none"]
    assert not (tmp_path / "fnet_eval" / "figures").exists()
