"""`experiment=finetune/vit_base_mae`: the MAE ViT-B/16 fine-tuning recipe (docs/finetuning.md#the-preset) says
what its source says, and it trains as written (shrunk to a tiny ViT on a miniature image folder, in-process)
with layer-wise lr decay, activation checkpointing, RandAugment, random erasing and Mixup/CutMix all on."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from omegaconf import open_dict

from conftest import compose_cfg
from helpers import fake_layouts

PRESET = "experiment=finetune/vit_base_mae"
# facebookresearch/mae FINETUNE.md, the ViT-Base command (and main_finetune.py's defaults for what it leaves out)
MAE_VIT_BASE = {
    "model.backbone.name": "vit_base_patch16_224",
    "model.backbone.weights": "hub:vit_base_patch16_224.mae",
    "model.backbone.drop_path_rate": 0.1,
    "model.freeze": "none",
    "model.grad_checkpointing": True,
    "data.img_size": 224,
    "data.batch_size": 1024,
    "data.crop_pct": 0.875,
    "data.augment.randaugment": "rand-m9-mstd0.5-inc1",
    "data.augment.random_erasing": 0.25,
    "optim.opt": "adamw",
    "optim.lr": 5.0e-4,
    "optim.lr_base_batch": 256,
    "optim.weight_decay": 0.05,
    "optim.layer_decay": 0.65,
    "scheduler.sched": "cosine",
    "scheduler.warmup_epochs": 5,
    "scheduler.min_lr": 1.0e-6,
    "module.label_smoothing": 0.1,
    "module.mixup.mixup_alpha": 0.8,
    "module.mixup.cutmix_alpha": 1.0,
    "trainer.max_epochs": 100,
}


def test_the_preset_is_mae_s_vit_base_recipe() -> None:
    from omegaconf import OmegaConf

    cfg = compose_cfg([PRESET])
    composed = {key: OmegaConf.select(cfg, key) for key in MAE_VIT_BASE}
    assert composed == MAE_VIT_BASE
    assert cfg.model.stem is None  # the pre-trained patch embedding, not a conv stem


@pytest.mark.slow  # trains end to end (in-process)
def test_the_preset_trains_as_written_on_a_tiny_vit(tmp_path: Path) -> None:
    from vitlab.cli import train as train_cli
    from vitlab.cli.in_place import apply_attempt, open_attempt
    from vitlab.cli.runner import run_task
    from vitlab.compose import compose_config

    fake_layouts.image_folder(tmp_path / "data", per_class=8, size=40)
    args = [
        PRESET,
        "model.backbone.weights=none",  # no downloads in tests
        "+model.backbone.embed_dim=32",
        "+model.backbone.depth=2",
        "+model.backbone.num_heads=2",
        "data.img_size=32",
        f"data.root={tmp_path / 'data'}",
        "data.batch_size=8",
        "data.num_workers=0",
        "trainer.accelerator=cpu",
        "trainer.max_epochs=1",
        "trainer.enable_progress_bar=false",
        "+trainer.limit_train_batches=2",
        "logger=csv",
    ]
    cfg = compose_config("train", args)
    with open_dict(cfg):
        cfg.paths.output_dir = str(tmp_path / "run")
    attempt = open_attempt(tmp_path / "run", args)
    apply_attempt(cfg, attempt)
    run_task(cfg, train_cli.train, attempt)
    record = json.loads((tmp_path / "run" / "results.json").read_text())
    assert record["status"] == "ok", record.get("error")
    # 2 blocks: layers 0 (embeddings) .. 3 (final norm and head), scales 0.65^3 .. 1
    scales = [row["lr_scale"] for row in record["optim/layer_scales"]]
    assert scales == pytest.approx([0.65**3, 0.65**2, 0.65, 1.0])
