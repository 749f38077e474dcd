"""`vitlab-bench`: report arithmetic on known numbers, and tiny end-to-end runs (no timing is ever asserted)."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
import torch

from conftest import ROOT, TINY, compose_cfg
from vitlab.bench.attention import render_markdown
from vitlab.errors import ConfigError

# vit_base shrunk for the bench CLIs' model_overrides (vit_base's config has no such keys: `+`)
TINY_VIT_B = ("+model.backbone.embed_dim=32", "+model.backbone.depth=2", "+model.backbone.num_heads=2")


def quoted_list(*overrides: str) -> str:
    """Overrides as one Hydra list value; each quoted, since an element holding '=' must be."""
    return "[" + ",".join(f"'{o}'" for o in overrides) + "]"


def run_bench(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "vitlab.cli.bench", *args], cwd=ROOT, capture_output=True, text=True)


def test_report_compares_with_the_reference_package_per_round_and_with_naive_softmax() -> None:
    results = [
        {"entry": "softmax_naive", "seq_len": 4097, "time_ms": 1000.0, "peak_mb": 7000.0},
        {"entry": "nystrom", "seq_len": 4097, "time_ms": 100.0, "rounds_ms": [100.0, 200.0, 100.0], "peak_mb": 500.0},
        {"entry": "nystrom_ref", "seq_len": 4097, "time_ms": 150.0, "rounds_ms": [150.0, 200.0, 200.0], "peak_mb": 600},
        {"entry": "fnet", "seq_len": 4097, "error": "boom"},
    ]
    env = {"cpu": "AMD EPYC", "cores": 2, "torch_threads": 2, "load_avg_1min": 3.5, "python": "3.11"}
    env |= {"versions": {"torch": "2.x"}, "device": "cpu"}
    table = render_markdown(results, {"batch_size": 8, "dim": 128, "heads": 4, "device": "cpu", "rounds": 3}, env)
    assert table.startswith("Machine: AMD EPYC, 2 cores, 2 torch threads, load average 3.5")
    assert "Fewer than 7 rounds" in table
    nystrom_row = next(line for line in table.splitlines() if line.startswith("| nystrom |"))
    assert "14.0× less" in nystrom_row
    # per-round ratios 1.5, 1.0, 2.0: median 1.5, min 1.0, max 2.0 (not 150/100 of two medians by chance)
    assert "| nystrom vs nystrom-attention | 1.50× (1.00–2.00) |" in table
    assert "nystrom-attention (reference)" in table
    assert "| fnet | failed | failed |" in table


def test_interleaved_rounds_call_every_competitor_once_per_round_in_order() -> None:
    from vitlab.bench.rounds import Spread, interleave, ratios

    calls = []
    competitors = {"a": lambda: calls.append("a") or 2.0, "b": lambda: calls.append("b") or 1.0}
    samples = interleave(competitors, 3, untimed_rounds=1)
    assert calls == ["a", "b"] * 4 and samples == {"a": [2.0] * 3, "b": [1.0] * 3}
    assert ratios([3.0, 4.0, 9.0], [1.0, 2.0, 3.0]) == Spread(3.0, 2.0, 3.0)
    assert Spread.of([1.0, 5.0, 2.0]).fmt(".1f", " s") == "2.0 s (1.0–5.0)"


def test_every_table_names_its_machine() -> None:
    from vitlab.bench.env import environment, header
    from vitlab.provenance import cpu_name

    env = environment("cpu", extra=("nystrom-attention",))
    assert cpu_name() and env["cores"] >= 1 and env["torch_threads"] >= 1
    assert env["versions"]["torch"] != "not installed" and "nystrom-attention" in env["versions"]
    assert header(env).startswith(f"Machine: {cpu_name()}, ")


def test_bench_layers_are_the_training_configs_mixers() -> None:
    """Our entries come from configs/model/mixer (+ kernel options), the references get the same settings."""
    from vitlab.bench.layers import build_layer, reference_of
    from vitlab.bench.worker import geometry
    from vitlab.models.mixers.nystrom import NystromKernel

    geo = geometry(65, 32, 2)
    ours = build_layer("nystrom", geo, extra=["model.mixer.kernel.num_landmarks=8"])
    assert isinstance(ours.kernel, NystromKernel) and ours.kernel.num_landmarks == 8
    assert build_layer("softmax_naive", geo).kernel.impl == "naive"
    ref = build_layer("nystrom_ref", geo, extra=["model.mixer.kernel.num_landmarks=8"])
    assert ref.num_landmarks == 8
    assert reference_of("nystrom") == "nystrom_ref" and reference_of("fnet") is None


@pytest.mark.slow  # starts vitlab processes or trains: not in make test-fast
def test_bench_cli_writes_table_json_and_plot(tmp_path) -> None:
    args = [
        "attention",
        "attention.seq_lens=[17,33]",
        "attention.entries=[softmax_naive,nystrom,nystrom_ref]",
        "attention.rounds=1",
        "attention.untimed_rounds=0",
        "attention.batch_size=2",
        f"out_dir={tmp_path}",
    ]
    proc = run_bench(*args)
    assert proc.returncode == 0, proc.stderr[-2000:]
    data = json.loads((tmp_path / "attention.json").read_text())
    assert {(r["entry"], r["seq_len"]) for r in data["results"]} == {
        (e, n) for e in ("softmax_naive", "nystrom", "nystrom_ref") for n in (17, 33)
    }
    assert all(r["time_ms"] > 0 and r["peak_mb"] is not None for r in data["results"])
    assert data["env"]["cpu"] and "nystrom-attention" in data["env"]["versions"]
    assert (tmp_path / "attention.png").stat().st_size > 1000
    assert "| nystrom |" in (tmp_path / "attention.md").read_text()


@pytest.mark.slow  # starts vitlab processes or trains: not in make test-fast
def test_bench_rejects_an_unknown_entry(tmp_path) -> None:
    proc = run_bench("attention", "attention.entries=[flash]", f"out_dir={tmp_path}")
    assert proc.returncode == 2
    assert "entries=['flash']" in proc.stderr and "nystrom_ref" in proc.stderr and "Traceback" not in proc.stderr


@pytest.mark.slow  # starts vitlab processes or trains: not in make test-fast
def test_model_bench_reports_params_macs_and_throughput(tmp_path) -> None:
    args = [
        "model",
        "model=eit_cifar",
        "data.img_size=32",
        "num_classes=10",
        "model_bench.batch_size=2",
        "model_bench.steps=1",
        "model_bench.untimed_steps=0",
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
        "batch_size": 4,
        "rounds": 7,
        "device": "cpu",
        "head_batch_size": 256,
        "step_ms": {"head_only": 500.0, "reference": 1000.0, "step_scalar": 1020.0, "memory_ode": 510.0},
        "trainable_no_head": {"head_only": 0, "reference": 0, "step_scalar": 24, "memory_ode": 0},
        "head_ms": {"linear": 0.5, "memory_ode": 2.0},
    }
    table = render_markdown(record)
    assert "| step_scalar | 24 | 1020.0 | +2.0% vs reference |" in table
    assert "| reference | 0 | 1000.0 | +100.0% vs head_only |" in table
    assert "| memory_ode | 0 | 510.0 | +2.0% vs head_only |" in table
    assert "memory-ODE (10 Euler steps) 2.00 ms (4.0×)" in table


@pytest.mark.slow  # starts vitlab processes or trains: not in make test-fast
def test_transfer_bench_cli_times_every_variant_on_a_tiny_vit(tmp_path) -> None:
    tiny = quoted_list("model.backbone.patch_size=4", *TINY_VIT_B)
    args = ["transfer", "transfer.img_size=16", f"transfer.model_overrides={tiny}", "transfer.rounds=1"]
    proc = run_bench(*args, "transfer.untimed_rounds=0", "transfer.head_batch_size=8", f"out_dir={tmp_path}")
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


@pytest.mark.slow  # starts vitlab processes or trains: not in make test-fast
def test_transfer_bench_rejects_an_unknown_variant(tmp_path) -> None:
    proc = run_bench("transfer", "transfer.variants=[lora_everything]", f"out_dir={tmp_path}")
    assert proc.returncode == 2
    assert "transfer.variants" in proc.stderr and "step_scalar" in proc.stderr and "Traceback" not in proc.stderr


def test_overhead_report_states_both_ratios_by_wall_clock_and_cpu_time() -> None:
    from vitlab.bench.overhead import render_markdown, summarise

    startup = summarise(
        {"first_step": [(13.0, 9.0), (12.0, 8.0)], "import": [(10.0, 7.5), (10.0, 8.0)]}, "first_step", "import"
    )
    per_step = summarise({"bare": [(1.0, 0.98), (1.0, 0.99)], "vitlab": [(1.0, 1.0), (1.25, 1.0)]}, "bare", "vitlab")
    text = render_markdown(startup, per_step | {"batch_size": 64}, 2, "Machine: test")
    assert text.startswith("Machine: test")
    # per-round ratios: wall 1.3 and 1.2, CPU 1.2 and 1.0
    rows = {line.split(" |")[0]: line for line in text.splitlines() if line.startswith("| **")}
    assert rows["| **start-up ratio** (first step / import, per round; target ≤ 1.5)"].endswith(
        "| **1.25 (1.20–1.30)** | **1.10 (1.00–1.20)** |"
    )
    assert rows["| **per-step ratio** (vitlab / bare throughput, per round; target ≥ 0.98)"].endswith(
        "| **0.900 (0.800–1.000)** | **0.985 (0.980–0.990)** |"
    )
    assert "| bare PyTorch loop | 64.0 (64.0–64.0) |" in text


@pytest.mark.slow  # starts vitlab processes or trains: not in make test-fast
def test_overhead_per_step_runs_vitlab_and_the_bare_loop_on_the_same_model(tmp_path, monkeypatch) -> None:
    """Both sides run whole training steps of this one model (a forward, a backward reaching the first layer, an
    optimiser step that moves the weights), counted by hooks rather than timed: a CPU-time bound here failed
    once in CI under load, and a loop that skipped the backward would still pass a loose one. The reported
    ratio is bare / vitlab of each round's samples."""
    import torch

    import vitlab.bench.overhead as overhead
    from vitlab.compose import compose_config
    from vitlab.training import components

    overrides = [*TINY, "data.augment=none", f"paths.log_dir={tmp_path}", f"paths.output_dir={tmp_path}"]
    cfg = compose_config("train", overrides)
    counts = {"vitlab": [0, 0], "bare": [0, 0]}  # [forwards, backwards reaching the first parameter] per side
    side = {"now": ""}
    models = []
    real_build_module = components.build_module

    def counted_build_module(*args, **kwargs):
        module = real_build_module(*args, **kwargs)
        first = next(p for p in module.model.parameters() if p.requires_grad)
        module.model.register_forward_hook(lambda *_: counts[side["now"]].__setitem__(0, counts[side["now"]][0] + 1))
        first.register_hook(lambda g: counts[side["now"]].__setitem__(1, counts[side["now"]][1] + 1))
        models.append((module.model, first, first.detach().clone()))
        return module

    monkeypatch.setattr(components, "build_module", counted_build_module)
    real_interleave = overhead.interleave

    def tagged_interleave(competitors, rounds, untimed_rounds=1):
        def tag(name, fn):
            def call():
                side["now"] = name
                return fn()

            return call

        return real_interleave({n: tag(n, f) for n, f in competitors.items()}, rounds, untimed_rounds)

    monkeypatch.setattr(overhead, "interleave", tagged_interleave)
    record = overhead.measure_per_step(cfg, rounds=1, steps=4, untimed_steps=1)
    samples = record["samples"]
    assert record["batch_size"] == 64 and len(samples["vitlab"]) == len(samples["bare"]) == 1
    ((_, first, before),) = models
    assert not torch.equal(first.detach(), before), "no side moved the weights"
    total = 1 + 4 + 1  # untimed + timed steps + the closing stamp, per call; two calls (one untimed round) a side
    # vitlab's fit also runs the model without a backward (its FLOP count), so forwards are at least the steps
    assert counts["vitlab"][1] == 2 * total and counts["vitlab"][0] >= 2 * total, counts
    assert counts["bare"] == [2 * (total - 1), 2 * (total - 1)], counts
    for i, clock in enumerate(("wall", "cpu")):
        expected = samples["bare"][0][i] / samples["vitlab"][0][i]
        assert record[f"ratio_{clock}"].median == pytest.approx(expected, rel=1e-12), clock


@pytest.mark.slow  # starts vitlab processes or trains: not in make test-fast
def test_time_to_first_step_stops_a_real_vitlab_train_at_its_first_step(tmp_path) -> None:
    """One real `vitlab-train` process: the callback added through Hydra stamps the first step and exits there.
    Its CPU time is that process's alone (the children's rusage across the call) and includes importing the
    libraries (at least 0.8x the import floor timed here); the stamp falls within the call and the process ends
    right after it: within 5 s or 30 % of the start-up (measured 0.07 s idle; the bound is loose because CI runs
    two test processes on two cores; the rest of a run is an epoch, validation and test, plus writing
    results.json); no checkpoint or results.json was written."""
    import resource
    import time

    from vitlab.bench.overhead import time_import_floor, time_to_first_step

    def children_cpu() -> float:
        usage = resource.getrusage(resource.RUSAGE_CHILDREN)
        return usage.ru_utime + usage.ru_stime

    _, floor_cpu = time_import_floor(timeout=300)
    start, cpu_before = time.time(), children_cpu()
    wall, cpu = time_to_first_step(TINY, tmp_path, timeout=300)
    elapsed, child_cpu = time.time() - start, children_cpu() - cpu_before
    why = f"first step at {wall:.2f} s wall / {cpu:.2f} s CPU, call {elapsed:.2f} s, import floor {floor_cpu:.2f} s CPU"
    assert cpu == pytest.approx(child_cpu, abs=1e-3) and cpu >= 0.8 * floor_cpu, f"{why}, child {child_cpu:.2f} s"
    assert 0 < wall <= elapsed < wall + max(5.0, 0.3 * wall), why
    assert not list(tmp_path.rglob("results.json")) and not list(tmp_path.rglob("*.ckpt"))  # nothing finished


def test_compile_report_gives_speedup_and_break_even() -> None:
    from vitlab.bench.compile import render_markdown
    from vitlab.bench.rounds import Spread

    record = {"eager_img_s": Spread(100.0, 90.0, 110.0), "compiled_img_s": Spread(150.0, 140.0, 160.0)}
    record |= {"speedup": Spread(1.5, 1.4, 1.6), "compile_s": 60.0, "break_even_steps": 180}
    record |= {"batch_size": 64, "backend": "inductor"}
    text = render_markdown(record, "default", 32, 7, "cpu", "Machine: test")
    assert (
        "| default | 100.0 (90.0–110.0) | 150.0 (140.0–160.0) | 1.50× (1.40–1.60) | 60 s | pays off after ~180 steps |"
        in text
    )


def test_transfer_overhead_is_the_ratio_within_each_round() -> None:
    from vitlab.bench.transfer import render_markdown

    record = {"backbone": "vit", "img_size": 224, "batch_size": 4, "rounds": 3, "device": "cpu", "head_batch_size": 8}
    record |= {"step_ms": {"reference": 100.0, "step_scalar": 110.0}, "trainable_no_head": {"reference": 0}}
    record["trainable_no_head"]["step_scalar"] = 24
    record["step_rounds_ms"] = {"reference": [100.0, 200.0, 100.0], "step_scalar": [110.0, 200.0, 120.0]}
    assert "| step_scalar | 24 | 110.0 | +10.0% (+0.0 to +20.0) vs reference |" in render_markdown(record)


LSCPU_AVX512 = """Architecture:                            x86_64
CPU(s):                                  2
Model name:                              AMD EPYC
CPU max MHz:                             3000.0000
Flags:                                   fpu sse2 avx avx2 fma avx512f avx512bw
"""


def test_cpu_peak_is_cores_times_clock_times_flops_per_cycle() -> None:
    from vitlab.bench.peak_flops import cpu_peak, cuda_peak

    peak = cpu_peak(LSCPU_AVX512, fma_units=2)
    assert peak.flops == 2 * 3.0e9 * 16 * 2 * 2  # avx512f: 16 fp32 lanes, FMA = 2 FLOPs, 2 units
    assert "2 FMA units per core, assumed" in peak.basis and "lscpu CPU max MHz" in peak.basis
    # no CPU max MHz (a VM): the clock of /proc/cpuinfo; avx2 + fma: 8 lanes; one core of the two
    avx2 = LSCPU_AVX512.replace("CPU max MHz:                             3000.0000\n", "")
    avx2 = avx2.replace(" avx512f avx512bw", "")
    peak = cpu_peak(avx2, "processor\t: 0\ncpu MHz\t\t: 2596.138\n", fma_units=1, cores=1)
    assert peak.flops == pytest.approx(2.596138e9 * 8 * 2) and "/proc/cpuinfo" in peak.basis
    assert cpu_peak(avx2, "").flops is None  # no clock anywhere: no peak, never a guess
    assert (
        cuda_peak("NVIDIA H200", "bf16").flops == 989e12 and cuda_peak("NVIDIA A100-SXM4-80GB", "tf32").flops == 156e12
    )
    assert cuda_peak("NVIDIA GeForce RTX 4090", "bf16").flops is None


def test_memory_report_ratios_are_per_round_and_mfu_uses_the_model_flops() -> None:
    from vitlab.bench.memory import render_markdown, summarise

    def cell(peak_mb: float, step_s: float, flops: int) -> dict:
        return {"peak_mb": peak_mb, "step_s": step_s, "flops": flops, "img_size": 224, "trainable": 10}

    samples = {
        "stock": {
            "off": [cell(1000.0, 10.0, 100), cell(1200.0, 20.0, 100)],
            "on": [cell(400.0, 12.0, 130), cell(700.0, 40.0, 130)],  # ratios: peak 0.4, 0.583; time 1.2, 2.0
        },
        "lora": {"off": [cell(500.0, 5.0, 50), {"error": "boom"}], "on": [{"error": "boom"}, {"error": "boom"}]},
    }
    cells, pairs = summarise(["stock", "lora"], samples, batch_size=10, peak=100.0)
    stock_on = next(c for c in cells if c["entry"] == "stock" and c["checkpointing"] == "on")
    assert stock_on["peak_mb"] == {"median": 550.0, "min": 400.0, "max": 700.0}
    assert stock_on["mb_per_image"] == 55.0
    # model FLOPs (100, the count without checkpointing) / median step time 26 s / peak 100 FLOP/s
    assert stock_on["achieved_flops_s"] == pytest.approx(100 / 26) and stock_on["mfu"] == pytest.approx(1 / 26)
    (stock,) = pairs  # lora has no round where both cells ran: no ratio
    assert stock["peak_ratio"]["median"] == pytest.approx((0.4 + 700 / 1200) / 2)
    assert stock["time_ratio"] == pytest.approx({"median": 1.6, "min": 1.2, "max": 2.0})
    assert stock["goal_met"] is False  # the peak ratio 0.49 meets <= 0.5, the time ratio 1.6 misses <= 1.4
    record = {"settings": {"batch_size": 10, "rounds": 2, "device": "cpu", "precision": "fp32"}}
    record |= {"cells": cells, "pairs": pairs, "peak_basis": "test peak"}
    text = render_markdown(record, "Machine: test")
    assert text.startswith("Machine: test") and "Fewer than 7 rounds" in text and "test peak" in text
    assert "| stock | 0.49× (0.40–0.58) | 1.60× (1.20–2.00) | no |" in text
    assert "| lora | on | failed: boom |" in text
    assert "| stock @ 224 px | off | 1100 (1000–1200) | 110.0 | 15.00 (10.00–20.00) | 0.0 | 0.0 | 6.7 % |" in text


@pytest.mark.slow  # starts vitlab processes or trains: not in make test-fast
def test_memory_bench_runs_every_cell_on_a_tiny_vit(tmp_path) -> None:
    tiny = quoted_list(*TINY_VIT_B)
    args = ["memory", "memory.only=[stock,lora]", "memory.img_size=32", "memory.batch_size=2", "memory.rounds=1"]
    proc = run_bench(*args, f"memory.model_overrides={tiny}", f"out_dir={tmp_path}")
    assert proc.returncode == 0, proc.stderr[-2000:]
    record = json.loads((tmp_path / "memory.json").read_text())
    assert [(c["entry"], c["checkpointing"]) for c in record["cells"]] == [
        ("stock", "off"),
        ("stock", "on"),
        ("lora", "off"),
        ("lora", "on"),
    ]
    assert all("error" not in c and c["peak_mb"]["median"] >= 0 and c["flops"] > 0 for c in record["cells"])
    trainable = {c["entry"]: c["trainable"] for c in record["cells"]}
    assert trainable["lora"] < trainable["stock"]  # model/peft=lora took effect
    flops = {(c["entry"], c["checkpointing"]): c["flops"] for c in record["cells"]}
    for entry in ("stock", "lora"):  # model.grad_checkpointing=true took effect: the blocks' forward runs twice
        assert flops[entry, "on"] > flops[entry, "off"], flops
    assert [p["entry"] for p in record["pairs"]] == ["stock", "lora"]
    assert "[4/4] round 1 lora checkpointing=True" in proc.stderr
    assert (tmp_path / "memory.md").read_text().startswith("Machine: ")


@pytest.mark.slow  # starts vitlab processes or trains: not in make test-fast
def test_memory_bench_refuses_an_unknown_entry_and_bf16_on_the_cpu(tmp_path) -> None:
    proc = run_bench("memory", "memory.only=[flash]", f"out_dir={tmp_path}")
    assert proc.returncode == 2 and "memory.only" in proc.stderr and "nystrom" in proc.stderr
    proc = run_bench("memory", "memory.precision=bf16-mixed", f"out_dir={tmp_path}")
    assert proc.returncode == 2 and "memory.device=cuda" in proc.stderr and "Traceback" not in proc.stderr


def test_attention_bench_in_bf16_needs_cuda_and_autocasts_the_forward(monkeypatch) -> None:
    """`attention.precision=bf16-mixed` (SDPA's flash kernel on a GPU) runs each layer's forward under autocast,
    and is refused on the CPU, where the table would claim a GPU path it never took."""
    from vitlab.bench import worker
    from vitlab.cli.bench import run_bench as bench_main

    with pytest.raises(ConfigError, match=r"attention\.precision='bf16-mixed'.*attention\.device=cuda"):
        bench_main(compose_cfg(["attention.precision=bf16-mixed"], config_name="bench"))
    seen: list[dict] = []
    real = torch.autocast
    monkeypatch.setattr(torch, "autocast", lambda **kw: seen.append(kw) or real(**kw))
    step = worker.make_step("softmax_sdpa", 17, 2, 32, 2, "cpu", "bf16-mixed")
    assert step() > 0 and seen[-1]["enabled"] and seen[-1]["dtype"] == torch.bfloat16
    worker.make_step("softmax_sdpa", 17, 2, 32, 2, "cpu")()
    assert not seen[-1]["enabled"]  # fp32: no autocast


@pytest.mark.slow  # starts a Python process: the bench's cells run in processes of their own
def test_a_cell_s_cpu_peak_counter_restarts_after_the_warm_up_step() -> None:
    """The CPU peak of a memory cell is the timed step's own: the kernel's high-water mark is reset to the current
    resident set after the warm-up step, then rises with what the timed step touches. In a process started as
    the bench starts its cells (glibc's mmap threshold fixed: freed tensors leave the resident set)."""
    from vitlab.bench.memory import MMAP_THRESHOLD

    script = """
import json, torch
from vitlab.bench import memory_cell as m
warm_up = torch.ones(96 * 2**18); del warm_up  # 96 MB, then freed
if not m.reset_rss_peak():
    print(json.dumps(None)); raise SystemExit
start, rss = m._status_mb("VmHWM"), m._status_mb("VmRSS")
timed = torch.ones(64 * 2**18)  # 64 MB touched by the "timed step"
print(json.dumps([start - rss, m._status_mb("VmHWM") - start]))
"""
    env = {**os.environ, "MALLOC_MMAP_THRESHOLD_": str(MMAP_THRESHOLD)}
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=env, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    measured = json.loads(done.stdout.strip().splitlines()[-1])
    if measured is None:
        pytest.skip("this kernel refuses /proc/self/clear_refs: the bench falls back to ru_maxrss (peak_scope)")
    after_reset, timed_rise = measured
    assert after_reset < 24 and timed_rise > 60, measured  # the warm-up's 96 MB forgotten; the timed 64 MB seen
