"""`make gpu-check`: one command that exercises every GPU path of vitlab on one GPU (about 8 minutes).

    python scripts/gpu_check.py                 # all checks -> outputs/gpu_check/report.md; exit 1 if any failed
    python scripts/gpu_check.py --only mixers,fsdp
    python scripts/gpu_check.py --list          # the checks and their commands, without running anything

On a machine without CUDA it prints one line saying so and exits 0 (nothing to check there). Each check is
a real `vitlab-train` / `vitlab-bench` command in its own process (a crash or hang costs that check only,
bounded by its timeout); sweeps over mixers, stems and heads run as one Hydra multirun so start-up is paid
once. The report gives every check's status, wall time, headline figure and log file.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import shutil
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

OUT = Path("outputs/gpu_check")
MIXERS = "softmax,performer,linformer,nystrom,fnet,mlp_mixer,eit"
PRECISIONS = "bf16-mixed,16-mixed"
# a few steps of each job: enough to run forward, backward, the optimiser, a validation and a test batch
FEW_STEPS = [
    "+trainer.max_steps=4",
    "+trainer.limit_val_batches=2",
    "+trainer.limit_test_batches=2",
    "trainer.max_epochs=1",
]
QUIET = ["trainer.enable_progress_bar=false", "logger=csv"]
GPU = ["trainer=gpu"]


def cli(name: str) -> list[str]:
    """The installed vitlab entry point `vitlab-<name>`."""
    from vitlab.console import console_script

    return console_script(f"vitlab-{name}")


@dataclass
class Check:
    name: str
    what: str
    command: list[str]
    timeout: int
    figure: Callable[[Path], str] = field(default=lambda log_dir: "")
    train: bool = True  # a vitlab-train command: its runs go under the check's own directory


def results_under(log_dir: Path) -> list[dict]:
    return [json.loads(p.read_text()) for p in sorted(log_dir.rglob("results.json"))]


def run_results(expected: int) -> Callable[[Path], str]:
    """Figure of a (multi)run: how many jobs wrote status ok, and their test accuracy / img/s when present.
    Raises when fewer than `expected` jobs finished ok, so the check fails even if the process exited 0."""

    def figure(log_dir: Path) -> str:
        rows = results_under(log_dir)
        ok = [r for r in rows if r.get("status") == "ok"]
        bad = [f"{r.get('overrides')}: {r.get('error', r.get('status'))}" for r in rows if r.get("status") != "ok"]
        if len(ok) < expected:
            raise RuntimeError(f"{len(ok)}/{expected} jobs ok; " + "; ".join(bad)[:600])
        parts = [f"{len(ok)}/{expected} jobs ok"]
        accs = [r["test/acc"] for r in ok if r.get("test/acc") is not None]
        speeds = [r["cost/train_img_per_s"] for r in ok if r.get("cost/train_img_per_s")]
        if len(ok) == 1 and accs:
            parts.append(f"test/acc {accs[0]:.3f}")
        if speeds:
            parts.append(f"train {min(speeds):.0f}–{max(speeds):.0f} img/s")
        return ", ".join(parts)

    return figure


def finetune_figure(log_dir: Path) -> str:
    """The fine-tuning recipe's run: ok, layer-wise decay applied (its table recorded) and fused AdamW ran."""
    summary = run_results(1)(log_dir)
    record = next(r for r in results_under(log_dir) if r.get("status") == "ok")
    table, implementation = record.get("optim/layer_scales"), record.get("optim/implementation")
    if not table or implementation != "fused":
        raise RuntimeError(f"optim/layer_scales={table!r}, optim/implementation={implementation!r} (want fused)")
    return f"{summary}, {len(table)} layers, lr scale {table[0]['lr_scale']:.2g}..{table[-1]['lr_scale']:.2g}, fused"


def markdown_file(name: str) -> Callable[[Path], str]:
    def figure(log_dir: Path) -> str:
        return f"see {log_dir / name}" if (log_dir / name).exists() else ""

    return figure


def checks() -> list[Check]:
    train, bench = cli("train"), cli("bench")
    preset = [*bench, "model", "data.img_size=224", "model_bench.device=cuda", "model_bench.batch_size=64"]
    presets = " && ".join(
        shlex.join([*preset, f"model={m}", f"out_dir={OUT}/eit_presets"])
        for m in ("eit_mini", "eit_tiny", "eit_base", "eit_large")
    )
    few = [*GPU, *FEW_STEPS, *QUIET]
    vit_small = ["model/backbone=vit_small", "~model/stem", "data=fake", "data.img_size=224"]
    # list elements with '=' must be quoted in Hydra's override grammar
    bare_loop = [*GPU, *vit_small, "data.batch_size=64", "data.train_size=2048", "trainer.enable_progress_bar=false"]
    bare_loop_overrides = "overhead.train_overrides=[" + ",".join(f"'{o}'" for o in bare_loop) + "]"
    # FSDP on one device: the strategy's wrapping, sharded checkpointing and mixed precision still run
    fsdp = ["trainer=fsdp", "trainer.devices=1", *vit_small]
    # the fine-tuning recipe's three memory and speed settings together, on ViT-B/16 at 224 px
    vit_base = ["model/backbone=vit_base", "~model/stem", "data=fake", "data.img_size=224", "data.batch_size=64"]
    finetune = ["optim.layer_decay=0.65", "model.grad_checkpointing=true", "optim.fused=true"]
    # a packed set (vitlab-data pack) read by 4 loader workers into pinned memory, bf16-mixed
    packed = f"{OUT}/shards/packed"
    two_epochs = ["trainer.max_epochs=2", f"paths.log_dir={OUT}/shards"]
    shards = " && ".join(
        [
            shlex.join([*cli("data"), "pack", "data=digits", f"out={packed}", "overwrite=true"]),
            shlex.join([*train, *GPU, *QUIET, "data=shards", f"data.root={packed}", "data.num_workers=4", *two_epochs]),
        ]
    )
    look_inside = ["callbacks=probe", "eval.tta=flip", "model/step_size=scalar", "model/head=memory_ode"]
    return [
        Check("fit_bf16", "default fit, trainer=gpu, bf16-mixed", [*train, *GPU, *QUIET], 150, run_results(1)),
        Check(
            "fit_fp16",
            "default fit, trainer=gpu, 16-mixed (gradient scaler)",
            [*train, *GPU, "trainer.precision=16-mixed", *QUIET],
            150,
            run_results(1),
        ),
        Check(
            "look_inside",
            "bf16 fit + test with callbacks=probe, eval.tta=flip, ODE figures: test logits gathered on CUDA",
            [*train, *GPU, *QUIET, *look_inside],
            150,
            run_results(1),
        ),
        Check(
            "mixers",
            "every mixer x bf16/fp16, a few steps (one multirun)",
            [*train, "-m", f"model/mixer={MIXERS}", f"trainer.precision={PRECISIONS}", *few],
            240,
            run_results(14),
        ),
        Check(
            "stems_heads",
            "stems (conv: default, EIT: eit_cifar) x heads (linear, memory-ODE) x bf16/fp16",
            [
                *train,
                "-m",
                "model=default,eit_cifar",
                "model/head=linear,memory_ode",
                f"trainer.precision={PRECISIONS}",
                *few,
            ],
            240,
            run_results(8),
        ),
        Check(
            "no_stem",
            "timm's patch embedding (no stem) x bf16/fp16",
            [*train, "-m", "~model/stem", f"trainer.precision={PRECISIONS}", *few],
            120,
            run_results(2),
        ),
        Check(
            "ddp",
            "trainer=ddp trainer.devices=1",
            [*train, "trainer=ddp", "trainer.devices=1", *FEW_STEPS, *QUIET],
            150,
            run_results(1),
        ),
        Check(
            "fsdp",
            "trainer=fsdp on vit_small (224 px, fake data)",
            [*train, *fsdp, *FEW_STEPS, *QUIET],
            180,
            run_results(1),
        ),
        Check(
            "compile",
            "module.compile=true (inductor + Triton), default model, bf16-mixed, 3 epochs",
            [*train, *GPU, "module.compile=true", "trainer.max_epochs=3", *QUIET],
            300,
            run_results(1),
        ),
        Check(
            "attention_bench",
            "vitlab-bench attention on CUDA up to 16,385 tokens (SDPA included; peak = max_memory_allocated)",
            [
                *bench,
                "attention",
                "attention.device=cuda",
                "attention.seq_lens=[1025,4097,16385]",
                "attention.timeout_s=240",
                f"out_dir={OUT}/attention_bench",
            ],
            420,
            markdown_file("attention.md"),
            train=False,
        ),
        Check(
            "finetune_vit_base",
            "vit_base 224 px, bf16-mixed: layer decay 0.65 + activation checkpointing + fused AdamW",
            [*train, *GPU, *vit_base, *finetune, *FEW_STEPS, *QUIET],
            240,
            finetune_figure,
        ),
        Check(
            "fsdp_checkpointing",
            "trainer=fsdp with model.grad_checkpointing=true on vit_small",
            [*train, *fsdp, "model.grad_checkpointing=true", *FEW_STEPS, *QUIET],
            180,
            run_results(1),
        ),
        Check(
            "memory_bench",
            "vitlab-bench memory on CUDA: ViT-B/16 224 px batch 32 per slot, checkpointing off/on, MFU (fp32)",
            [
                *bench,
                "memory",
                "memory.device=cuda",
                "memory.rounds=1",
                "memory.timeout_s=240",
                f"out_dir={OUT}/memory",
            ],
            600,
            markdown_file("memory.md"),
            train=False,
        ),
        Check(
            "long_attention_bf16",
            "SDPA's flash kernel (bf16) against our mixers at 4,097 and 16,385 tokens",
            [
                *bench,
                "attention",
                "attention.device=cuda",
                "attention.precision=bf16-mixed",
                "attention.seq_lens=[4097,16385]",
                "attention.timeout_s=240",
                f"out_dir={OUT}/long_attention_bf16",
            ],
            420,
            markdown_file("attention.md"),
            train=False,
        ),
        Check("eit_presets", "EIT presets' training img/s at 224 px", ["bash", "-c", presets], 300, _eit_figure, False),
        Check(
            "shards",
            "vitlab-data pack digits, train from shards: 4 workers, pinned, bf16",
            ["bash", "-c", shards],
            200,
            run_results(1),
            False,
        ),
        Check(
            "bare_loop",
            "per-step throughput, vitlab vs a bare PyTorch loop, vit_small at 224 px",
            [*bench, "overhead", "overhead.startup=false", f"out_dir={OUT}/bare_loop", bare_loop_overrides],
            300,
            markdown_file("overhead.md"),
            train=False,
        ),
    ]


def _eit_figure(log_dir: Path) -> str:
    files = sorted(log_dir.glob("model_*.json"))
    rates = {p.stem.removeprefix("model_"): json.loads(p.read_text())["cost/train_img_per_s"] for p in files}
    return ", ".join(f"{name}: {rate:.0f} img/s" for name, rate in rates.items())


def run_check(check: Check) -> dict:
    log_dir = OUT / check.name
    log_dir.mkdir(parents=True, exist_ok=True)
    command = [*check.command, f"paths.log_dir={log_dir}"] if check.train else list(check.command)
    log_file = log_dir / "log.txt"
    start = time.time()
    with log_file.open("w") as log:
        log.write(" ".join(command) + "\n\n")
        log.flush()
        try:
            done = subprocess.run(command, stdout=log, stderr=subprocess.STDOUT, timeout=check.timeout)
            status, note = ("ok", "") if done.returncode == 0 else ("failed", f"exit status {done.returncode}")
        except subprocess.TimeoutExpired:
            status, note = "failed", f"timed out after {check.timeout} s"
    if status == "ok":
        try:
            note = check.figure(log_dir)
        except Exception as exc:
            status, note = "failed", str(exc)
    seconds = time.time() - start
    return {
        "name": check.name,
        "what": check.what,
        "status": status,
        "seconds": seconds,
        "note": note,
        "log": str(log_file),
    }


def write_report(rows: list[dict], header: str, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    failed = [r["name"] for r in rows if r["status"] != "ok"]
    lines = [
        "# vitlab GPU check",
        "",
        header,
        "",
        "| check | what | status | s | figure / reason | log |",
        "|---|---|---|---:|---|---|",
    ]
    for r in rows:
        note = str(r["note"]).replace("|", "/").replace("\n", " ")
        lines.append(f"| {r['name']} | {r['what']} | {r['status']} | {r['seconds']:.0f} | {note} | {r['log']} |")
    verdict = f"; failed: {', '.join(failed)}" if failed else "."
    lines += ["", f"**{len(rows) - len(failed)}/{len(rows)} checks passed**{verdict}"]
    path.write_text("\n".join(lines) + "\n")
    return path


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--only", default="", help="comma-separated check names (default: all)")
    p.add_argument("--list", action="store_true", help="print the checks and their commands; run nothing")
    a = p.parse_args(argv)
    selected = checks()
    if a.only:
        names = a.only.split(",")
        unknown = sorted(set(names) - {c.name for c in selected})
        if unknown:
            p.error(f"--only: unknown checks {unknown}; allowed: {', '.join(c.name for c in selected)}")
        selected = [c for c in selected if c.name in names]
    if a.list:
        for c in selected:
            print(f"{c.name:16s} {c.what}\n{'':16s} {' '.join(c.command)}")
        return 0
    import torch

    if not torch.cuda.is_available():
        print("gpu-check: skipped: no CUDA GPU on this machine (torch.cuda.is_available() is False); nothing to check.")
        return 0
    from vitlab.bench.env import environment, header

    if shutil.which("nvidia-smi"):
        subprocess.run(["nvidia-smi", "-L"], check=False)
    rows = []
    for check in selected:
        print(f"gpu-check: {check.name}: {check.what} ...", flush=True)
        rows.append(run_check(check))
        r = rows[-1]
        print(f"gpu-check: {check.name}: {r['status']} in {r['seconds']:.0f} s {r['note']}", flush=True)
    report = write_report(rows, header(environment("cuda")), OUT / "report.md")
    failed = [r["name"] for r in rows if r["status"] != "ok"]
    print(report.read_text())
    if failed:
        print(f"gpu-check: FAILED: {', '.join(failed)} (logs under {OUT})", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    os.environ.setdefault("WANDB_MODE", "disabled")
    raise SystemExit(main())
