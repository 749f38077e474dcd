"""`vitlab-bench attention`: report arithmetic on known numbers, and one tiny end-to-end run (no timing asserted)."""

from __future__ import annotations

import json
import subprocess
import sys

from conftest import ROOT
from vitlab.bench.attention import render_markdown


def run_bench(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "vitlab.cli.bench", *args], cwd=ROOT, capture_output=True, text=True)


def test_report_compares_with_the_reference_package_and_with_naive_softmax() -> None:
    results = [
        {"entry": "softmax_naive", "seq_len": 4097, "time_ms": 1000.0, "peak_mb": 7000.0},
        {"entry": "nystrom", "seq_len": 4097, "time_ms": 100.0, "peak_mb": 500.0},
        {"entry": "nystrom_ref", "seq_len": 4097, "time_ms": 150.0, "peak_mb": 600.0},
        {"entry": "fnet", "seq_len": 4097, "error": "boom"},
    ]
    table = render_markdown(results, {"batch": 8, "dim": 128, "heads": 4, "device": "cpu"})
    nystrom_row = next(line for line in table.splitlines() if line.startswith("| nystrom |"))
    assert "| 1.50× |" in nystrom_row and "14.0× less" in nystrom_row
    assert "nystrom-attention (reference)" in table
    assert "| fnet | failed | failed |" in table


def test_bench_cli_writes_table_json_and_plot(tmp_path) -> None:
    args = [
        "attention",
        "attention.seq_lens=[17,33]",
        "attention.entries=[softmax_naive,nystrom,nystrom_ref]",
        "attention.repeats=1",
        "attention.warmup=0",
        "attention.batch=2",
        f"out_dir={tmp_path}",
    ]
    proc = run_bench(*args)
    assert proc.returncode == 0, proc.stderr[-2000:]
    data = json.loads((tmp_path / "attention.json").read_text())
    assert {(r["entry"], r["seq_len"]) for r in data["results"]} == {
        (e, n) for e in ("softmax_naive", "nystrom", "nystrom_ref") for n in (17, 33)
    }
    assert all(r["time_ms"] > 0 and "peak_mb" in r for r in data["results"])
    assert (tmp_path / "attention.png").stat().st_size > 1000
    assert "| nystrom |" in (tmp_path / "attention.md").read_text()


def test_bench_rejects_an_unknown_entry(tmp_path) -> None:
    proc = run_bench("attention", "attention.entries=[flash]", f"out_dir={tmp_path}")
    assert proc.returncode == 2
    assert "entries=['flash']" in proc.stderr and "nystrom_ref" in proc.stderr and "Traceback" not in proc.stderr


def test_model_bench_reports_params_macs_and_throughput(tmp_path) -> None:
    args = [
        "model",
        "model=eit_cifar",
        "data.img_size=32",
        "num_classes=10",
        "model_bench.batch=2",
        "model_bench.steps=1",
        "model_bench.warmup=0",
        f"out_dir={tmp_path}",
    ]
    proc = run_bench(*args)
    assert proc.returncode == 0, proc.stderr[-2000:]
    record = json.loads((tmp_path / "model_eit_cifar.json").read_text())
    assert record["params/total"] == 3_079_010  # docs/papers/eit.md#presets
    assert record["cost/macs_per_image"] > record["cost/macs_no_attn_per_image"] > 0
    assert record["cost/train_img_per_s"] > 0


def test_transfer_report_gives_each_variants_overhead_against_its_baseline() -> None:
    from vitlab.bench.transfer import render_markdown

    record = {
        "backbone": "vit_base_patch16_224",
        "img_size": 224,
        "batch": 4,
        "rounds": 7,
        "device": "cpu",
        "head_batch": 256,
        "step_ms": {"head_only": 500.0, "reference": 1000.0, "step_scalar": 1020.0, "memory_ode": 510.0},
        "trainable_no_head": {"head_only": 0, "reference": 0, "step_scalar": 24, "memory_ode": 0},
        "head_ms": {"linear": 0.5, "memory_ode": 2.0},
    }
    table = render_markdown(record)
    assert "| step_scalar | 24 | 1020.0 | +2.0% vs reference |" in table
    assert "| reference | 0 | 1000.0 | +100.0% vs head_only |" in table
    assert "| memory_ode | 0 | 510.0 | +2.0% vs head_only |" in table
    assert "memory-ODE (10 Euler steps) 2.00 ms (4.0×)" in table


def test_transfer_bench_cli_times_every_variant_on_a_tiny_vit(tmp_path) -> None:
    tiny = "{patch_size:4,embed_dim:32,depth:2,num_heads:2}"
    args = ["transfer", "transfer.img_size=16", f"transfer.backbone_kwargs={tiny}", "transfer.rounds=1"]
    proc = run_bench(*args, "transfer.warmup=0", "transfer.head_batch=8", f"out_dir={tmp_path}")
    assert proc.returncode == 0, proc.stderr[-2000:]
    record = json.loads((tmp_path / "transfer.json").read_text())
    assert set(record["step_ms"]) == {
        "head_only",
        "reference",
        "step_scalar",
        "step_channel",
        "step_dynamic",
        "memory_ode",
        "full",
    }
    assert all(ms > 0 for ms in record["step_ms"].values())
    counts = record["trainable_no_head"]
    assert (counts["head_only"], counts["reference"], counts["step_scalar"], counts["step_channel"]) == (
        0,
        0,
        4,
        4 * 32,
    )
    assert counts["step_dynamic"] == 4 * 33 and counts["full"] > 4 * 32 * 32
    assert "vs reference" in (tmp_path / "transfer.md").read_text()


def test_transfer_bench_rejects_an_unknown_variant(tmp_path) -> None:
    proc = run_bench("transfer", "transfer.variants=[lora_everything]", f"out_dir={tmp_path}")
    assert proc.returncode == 2
    assert "transfer.variants" in proc.stderr and "step_scalar" in proc.stderr and "Traceback" not in proc.stderr
