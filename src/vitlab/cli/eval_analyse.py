"""`vitlab-eval analyse=attention ckpt_path=... data.n_images=8`: look at a checkpoint's attention instead of testing.

For the first `data.n_images` test images: per block, each head's attention of the class token over the image (the
mean over queries for a model without one) and the head mean, for a linear mixer the matrix it implies next to
softmax(q kᵀ/√d) of the same q and k; the attention rollout (Abnar & Zuidema 2020). Writes
`figures/attention_block<i>.png`, `figures/attention_rollout.png`, `attention/attention.npz` and, in results.json,
the mixer, the sizes and per block the rows' entropy and their distance to softmax (docs/attention.md).
FNet and MLP-Mixer models get one sentence instead: they mix tokens without an attention matrix.
"""

from __future__ import annotations

import copy
import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from omegaconf import DictConfig, OmegaConf, open_dict

from vitlab.analysis.attention_maps import (
    ModelAttention,
    backbone_of,
    model_attention,
    no_attention_reason,
    relative_frobenius,
    row_entropy,
    row_tv_distance,
    token_maps,
)
from vitlab.analysis.rollout import attention_rollout
from vitlab.cli.rules import POSITIVE_INT, refuse, refuse_name
from vitlab.plots.attention import display_images, heatmap_grid
from vitlab.plots.figures import figure_path, log_images
from vitlab.training.components import build_trainer, log_config, update_wandb_summary

log = logging.getLogger("vitlab")

ANALYSES = ("attention",)  # the options of configs/analyse/
MAX_SAVED_TOKENS = 257  # full (L, n, H, N, N) matrices go into attention.npz up to this many tokens (16×16 + 1)


def run_analysis(cfg: DictConfig, record: dict[str, Any], load_trained: Callable[[DictConfig], Any]) -> None:
    """`cfg` as composed (before the checkpoint's config is merged in); `load_trained(cfg)` -> (module, datamodule)."""
    name = cfg.get("analyse")
    if name not in ANALYSES:
        raise refuse_name("analyse", name, ANALYSES)
    cfg, n_images = without_n_images(cfg)
    module, datamodule = load_trained(cfg)
    images = test_images(datamodule, n_images)
    trainer = build_trainer(cfg)  # its loggers only: the figures go to W&B too when the run logs there
    log_config(trainer, cfg)
    written = write_attention(module.model, images, Path(cfg.paths.output_dir), record)
    log_images(trainer.loggers, {f"attention/{p.stem}": p for p in written})
    update_wandb_summary(trainer, record)


def without_n_images(cfg: DictConfig) -> tuple[DictConfig, int]:
    """(cfg without `data.n_images`, n): the key is the analysis's, never the data module's; a `data` node that
    held nothing else becomes null, so the checkpoint's own data config is used."""
    cfg = copy.deepcopy(cfg)
    data = cfg.get("data")
    n_images = OmegaConf.select(cfg, "data.n_images", default=8)
    if not POSITIVE_INT.accepts(n_images):
        raise refuse("data.n_images", n_images, "a positive integer (how many test images are analysed)")
    with open_dict(cfg):
        if data is not None and "n_images" in data:
            data.pop("n_images")
            if len(data) == 0:
                cfg.data = None
    return cfg, int(n_images)


def test_images(datamodule: Any, n_images: int) -> torch.Tensor:
    """The first n images of the test split, as the model sees them (evaluation transform)."""
    datamodule.setup("test")
    test_set = datamodule.test_set
    if n_images > len(test_set):
        raise refuse("data.n_images", n_images, f"at most {len(test_set)}, the size of this test split")
    return torch.stack([test_set[i][0] for i in range(n_images)])


def write_attention(model: torch.nn.Module, images: torch.Tensor, run_dir: Path, record: dict[str, Any]) -> list[Path]:
    """Compute, draw and record the attention of `model` on `images`; the figures written."""
    backbone = backbone_of(model)
    reason = no_attention_reason(backbone)
    if reason is not None:
        sentence = f"{reason}: no attention maps were drawn."
        record.update({"attention/mixer": type(backbone.blocks[0].attn).__name__, "attention/none": sentence})
        print(f"\n{sentence}")
        return []
    model = model.cpu().float()  # the analysis reads matrices on the CPU, in fp32
    maps = model_attention(model, images.float())
    record.update(attention_numbers(maps, len(images)))
    shown = display_images(images.numpy())
    written = [draw_block(maps, i, shown, run_dir) for i in range(len(maps.blocks))]
    rollout = rollout_maps(maps, record)
    if rollout:
        titles = list(rollout)
        grid = np.stack([rollout[t] for t in titles], axis=1)
        path = figure_path(run_dir, "attention_rollout")
        written.append(heatmap_grid(shown, grid, titles, path, title=f"{maps.mixer}: attention rollout"))
    save_npz(maps, shown, rollout, run_dir / "attention" / "attention.npz")
    record["attention/figures"] = [str(p.relative_to(run_dir)) for p in written]
    print_summary(maps, record)
    return written


def _maps(maps: ModelAttention, matrix: torch.Tensor) -> np.ndarray:
    return token_maps(matrix, maps.num_prefix_tokens, maps.has_class_token, maps.grid).numpy()


def draw_block(maps: ModelAttention, i: int, shown: np.ndarray, run_dir: Path) -> Path:
    """figures/attention_block<i>.png: per image, each head, the head mean and (linear mixers) softmax's mean."""
    block = maps.blocks[i]
    per_head = _maps(maps, block.implied)  # (n, H, rows, cols)
    columns = [per_head, per_head.mean(axis=1, keepdims=True)]
    titles = [f"head {h}" for h in range(maps.heads)] + ["mean"]
    if maps.mixer != "softmax":
        columns.append(_maps(maps, block.softmax).mean(axis=1, keepdims=True))
        titles.append("softmax(qkᵀ) mean")
    what = "class token" if maps.has_class_token else "mean over queries"
    title = f"{maps.mixer}, block {i}: attention of the {what}"
    return heatmap_grid(
        shown, np.concatenate(columns, axis=1), titles, figure_path(run_dir, f"attention_block{i}"), title
    )


def rollout_maps(maps: ModelAttention, record: dict[str, Any]) -> dict[str, np.ndarray]:
    """{title: (n, rows, cols)} rollout maps of the implied matrices (and of softmax's for linear mixers); a
    rollout that cannot be normalised (rows of Ā + I summing to ≤ 0) is left out and said in results.json."""
    out: dict[str, np.ndarray] = {}
    sources = {maps.mixer: [b.implied for b in maps.blocks]}
    if maps.mixer != "softmax":
        sources["softmax(qkᵀ)"] = [b.softmax for b in maps.blocks]
    for title, matrices in sources.items():
        try:
            out[f"rollout {title}"] = _maps(maps, attention_rollout(matrices))
        except ValueError as exc:
            record[f"attention/rollout_{'softmax' if title != maps.mixer else 'mixer'}"] = str(exc)
    return out


def attention_numbers(maps: ModelAttention, n_images: int) -> dict[str, Any]:
    """What results.json records: the mixer, sizes, and per block (lists, block 0 first) the implied rows'
    entropy (null when they are not distributions), their largest |row sum − 1|, and their distance to softmax
    of the same q, k (mean row-wise total variation; relative Frobenius norm)."""
    blocks = maps.blocks
    return {
        "attention/mixer": maps.mixer,
        "attention/blocks": len(blocks),
        "attention/heads": maps.heads,
        "attention/tokens": maps.tokens,
        "attention/class_token": maps.has_class_token,
        "attention/n_images": n_images,
        "attention/entropy": [row_entropy(b.implied) for b in blocks],
        "attention/softmax_entropy": [row_entropy(b.softmax) for b in blocks],
        "attention/row_sum_max_error": [float((b.implied.sum(-1) - 1).abs().max()) for b in blocks],
        "attention/tv_to_softmax": [row_tv_distance(b.implied, b.softmax) for b in blocks],
        "attention/rel_frobenius_to_softmax": [relative_frobenius(b.implied, b.softmax) for b in blocks],
    }


def save_npz(maps: ModelAttention, shown: np.ndarray, rollout: dict[str, np.ndarray], path: Path) -> None:
    """attention/attention.npz: images, per-block token maps, rollout maps; the full matrices for short sequences."""
    arrays: dict[str, np.ndarray] = {
        "images": shown,
        "maps": np.stack([_maps(maps, b.implied) for b in maps.blocks]),  # (L, n, H, rows, cols)
        "softmax_maps": np.stack([_maps(maps, b.softmax) for b in maps.blocks]),
        **{k.replace(" ", "_").replace("(qkᵀ)", ""): v for k, v in rollout.items()},
    }
    if maps.tokens <= MAX_SAVED_TOKENS:
        arrays["matrices"] = np.stack([b.implied.numpy() for b in maps.blocks])  # (L, n, H, N, N)
        arrays["softmax_matrices"] = np.stack([b.softmax.numpy() for b in maps.blocks])
        residual = [b.residual for b in maps.blocks if b.residual is not None]
        if residual:
            arrays["residual_matrices"] = np.stack([r.numpy() for r in residual])  # (L, H, N, N)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")  # a reader never sees half a file
    with tmp.open("wb") as f:  # a file object: savez would append .npz to a name
        np.savez_compressed(f, **{k: v.astype(np.float32) for k, v in arrays.items()})
    tmp.replace(path)


def print_summary(maps: ModelAttention, record: dict[str, Any]) -> None:
    print(f"\nattention of {maps.mixer}: {len(maps.blocks)} blocks x {maps.heads} heads, {maps.tokens} tokens")
    print("block   entropy   TV to softmax(qkᵀ)")
    for i, (entropy, tv) in enumerate(zip(record["attention/entropy"], record["attention/tv_to_softmax"], strict=True)):
        shown = "   -   " if entropy is None else f"{entropy:7.3f}"
        print(f"{i:5d}   {shown}   {tv:.4f}")
