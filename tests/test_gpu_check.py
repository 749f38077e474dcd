"""`make gpu-check` (scripts/gpu_check.py): the CPU-only skip, the check list, the report and its verdict.

The checks themselves need a GPU; what runs here is everything around them.
"""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import ROOT

SCRIPT = ROOT / "scripts" / "gpu_check.py"


def load_script():
    spec = importlib.util.spec_from_file_location("gpu_check", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


def test_without_cuda_it_says_so_and_exits_0(tmp_path) -> None:
    env = {**os.environ, "CUDA_VISIBLE_DEVICES": ""}
    done = subprocess.run([sys.executable, str(SCRIPT)], cwd=tmp_path, env=env, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "gpu-check: skipped: no CUDA GPU on this machine" in done.stdout
    assert not (tmp_path / "outputs").exists()  # nothing was run, nothing written


def test_the_checks_cover_every_gpu_path() -> None:
    gpu_check = load_script()
    commands = {c.name: " ".join(c.command) for c in gpu_check.checks()}
    assert "trainer.precision=16-mixed" in commands["fit_fp16"] and "trainer=gpu" in commands["fit_bf16"]
    for mixer in ("softmax", "performer", "linformer", "nystrom", "fnet", "mlp_mixer", "eit"):
        assert mixer in commands["mixers"]
    assert "trainer.precision=bf16-mixed,16-mixed" in commands["mixers"]
    assert "model=default,eit_cifar" in commands["stems_heads"] and "memory_ode" in commands["stems_heads"]
    assert "~model/stem" in commands["no_stem"]
    assert "trainer=ddp trainer.devices=1" in commands["ddp"]
    assert "trainer=fsdp" in commands["fsdp"] and "model/backbone=vit_small" in commands["fsdp"]
    assert "module.compile=true" in commands["compile"]
    assert "16385" in commands["attention_bench"] and "attention.device=cuda" in commands["attention_bench"]
    assert all(m in commands["eit_presets"] for m in ("eit_mini", "eit_tiny", "eit_base", "eit_large"))
    assert "overhead.startup=false" in commands["bare_loop"] and "vit_small" in commands["bare_loop"]
    finetune = commands["finetune_vit_base"]
    assert all(k in finetune for k in ("optim.layer_decay=", "model.grad_checkpointing=true", "optim.fused=true"))
    assert "model/backbone=vit_base" in finetune and "data.img_size=224" in finetune and "trainer=gpu" in finetune
    assert (
        "trainer=fsdp" in commands["fsdp_checkpointing"] and "grad_checkpointing=true" in commands["fsdp_checkpointing"]
    )
    assert "memory memory.device=cuda" in commands["memory_bench"]
    long = commands["long_attention_bf16"]
    assert "attention.precision=bf16-mixed" in long and "4097" in long and "16385" in long


def test_the_finetune_check_fails_unless_layer_decay_and_fused_adamw_ran(tmp_path) -> None:
    gpu_check = load_script()
    record = {
        "status": "ok",
        "optim/implementation": "fused",
        "optim/layer_scales": [{"lr_scale": 0.1}, {"lr_scale": 1}],
    }
    (tmp_path / "results.json").write_text(json.dumps(record))
    assert "fused" in gpu_check.finetune_figure(tmp_path)
    for changed in ({"optim/implementation": "foreach"}, {"optim/layer_scales": None}):
        (tmp_path / "results.json").write_text(json.dumps({**record, **changed}))
        with pytest.raises(RuntimeError, match="want fused"):
            gpu_check.finetune_figure(tmp_path)


def test_bare_loop_overrides_parse_as_a_list_in_hydra() -> None:
    from hydra.core.override_parser.overrides_parser import OverridesParser

    gpu_check = load_script()
    bare = next(c for c in gpu_check.checks() if c.name == "bare_loop")
    override = next(a for a in bare.command if a.startswith("overhead.train_overrides="))
    value = OverridesParser.create().parse_overrides([override])[0].value()
    assert "~model/stem" in value and "data.img_size=224" in value and "trainer=gpu" in value


def test_a_multirun_with_a_failed_job_fails_the_check(tmp_path: Path) -> None:
    gpu_check = load_script()
    for i, status in enumerate(["ok", "failed"]):
        run = tmp_path / str(i)
        run.mkdir()
        record = {"status": status, "overrides": [f"job={i}"], "cost/train_img_per_s": 100.0 + i}
        (run / "results.json").write_text(json.dumps(record | ({"error": "CUDA error"} if i else {})))
    with pytest.raises(RuntimeError, match=r"1/2 jobs ok; \['job=1'\]: CUDA error"):
        gpu_check.run_results(2)(tmp_path)
    assert gpu_check.run_results(1)(tmp_path) == "1/1 jobs ok, train 100–100 img/s"


def test_report_lists_what_failed(tmp_path: Path) -> None:
    gpu_check = load_script()
    rows = [
        {"name": "fit_bf16", "what": "fit", "status": "ok", "seconds": 30.0, "note": "test/acc 0.97", "log": "a"},
        {"name": "fsdp", "what": "fsdp", "status": "failed", "seconds": 5.0, "note": "exit status 1", "log": "b"},
    ]
    text = gpu_check.write_report(rows, "Machine: test", tmp_path / "report.md").read_text()
    assert "| fsdp | fsdp | failed | 5 | exit status 1 | b |" in text
    assert "**1/2 checks passed**; failed: fsdp" in text


def test_only_rejects_an_unknown_check() -> None:
    done = subprocess.run(
        [sys.executable, str(SCRIPT), "--only", "warp_drive", "--list"], capture_output=True, text=True
    )
    assert done.returncode == 2 and "warp_drive" in done.stderr and "fit_bf16" in done.stderr
