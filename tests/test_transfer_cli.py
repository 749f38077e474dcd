"""The transfer workflow end to end: pre-train and export weights, transfer them frozen with step sizes and
the memory-ODE head, and the guards around it (existing export file, test_checkpoint)."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file

from conftest import TINY, run_cli

pytestmark = pytest.mark.slow  # starts vitlab processes or trains end to end: not in make test-fast

DIGITS = ["data.num_workers=0", "~model/stem"]


@pytest.fixture(scope="module")
def exported(tmp_path_factory) -> tuple:
    """A tiny stock ViT trained one epoch on digits 0-4, its backbone exported to safetensors."""
    log_dir = tmp_path_factory.mktemp("pretrain")
    weights = log_dir / "digits04.safetensors"
    run = run_cli("train", [*TINY, *DIGITS, "data.classes=[0,1,2,3,4]", f"export_weights={weights}"], log_dir)
    assert run.returncode == 0, run.stderr[-3000:]
    return weights, run


def test_export_writes_the_backbone_and_records_it(exported) -> None:
    weights, run = exported
    (result,) = run.results()
    assert result["exported_weights"] == str(weights)
    state = load_file(weights)
    assert "blocks.0.attn.qkv.weight" in state and state["head.weight"].shape[0] == 5


def test_export_refuses_an_existing_file_before_training(exported, tmp_path) -> None:
    weights, _ = exported
    before = weights.read_bytes()
    run = run_cli("train", [*TINY, *DIGITS, f"export_weights={weights}"], tmp_path)
    assert run.returncode != 0 and "export_weights" in run.stderr and "Traceback" not in run.stderr
    assert weights.read_bytes() == before and not list(tmp_path.rglob("*.ckpt"))  # nothing trained, nothing lost


def test_transfer_trains_only_the_step_sizes_and_the_head_and_logs_the_dynamics(exported, tmp_path) -> None:
    weights, _ = exported
    transfer = [
        "data.classes=[5,6,7,8,9]",
        "data.train_per_class=10",
        f"model.backbone.weights=file:{weights}",
        "model.backbone.pretrained_head=false",
        "model/step_size=scalar",
        "model/head=memory_ode",
        "test_checkpoint=last",
        "trainer.max_epochs=2",
        "optim.lr=1e-2",
    ]
    run = run_cli("train", [*TINY, "data.num_workers=0", *transfer], tmp_path)  # the default stem (auto) keeps
    assert run.returncode == 0, run.stderr[-3000:]  # the loaded patch embedding: no ~model/stem needed
    (result,) = run.results()
    assert result["params/trainable_no_head"] == 2 * 2  # 2 blocks x (attention, MLP)
    tensors = load_file(weights)
    report = json.loads(next(tmp_path.rglob("weights_report.json")).read_text())
    assert (result["weights/loaded"], result["weights/dropped"]) == (len(tensors) - 2, 2)
    assert [k for k in report["new"] if not k.startswith("model.head.")] == [  # the 4 step sizes, and the head slot
        f"blocks.{b}.ls{i}.h_param" for b in (0, 1) for i in (1, 2)
    ]
    assert set(report["dropped"]) == {"head.weight", "head.bias"} and "patch_embed.proj.weight" in report["loaded"]
    assert result["dynamics/h_min"] != 1.0 or result["dynamics/h_max"] != 1.0  # the step sizes moved
    assert result["dynamics/a_min"] >= 1.0  # a = 1 + ρ with ρ ≥ 0 by projection
    evaluated = run_cli("eval", [f"ckpt_path={next(tmp_path.rglob('last.ckpt'))}"], tmp_path / "eval")
    assert evaluated.returncode == 0, evaluated.stderr[-3000:]  # rebuilt with the patch embedding it trained with
    ckpt = torch.load(next(tmp_path.rglob("last.ckpt")), map_location="cpu", weights_only=True)["state_dict"]
    for name, tensor in tensors.items():
        if not name.startswith("head."):  # every pre-trained tensor is bit-identical after training
            assert torch.equal(ckpt[f"model.backbone.{name}"], tensor), name


def test_test_checkpoint_must_be_best_or_last(tmp_path) -> None:
    run = run_cli("train", [*TINY, *DIGITS, "test_checkpoint=worst"], tmp_path)
    assert run.returncode != 0 and "test_checkpoint" in run.stderr and "best" in run.stderr
    assert not list(tmp_path.rglob("*.ckpt"))
