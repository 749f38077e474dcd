"""End-to-end exact resume: a run killed (SIGKILL) or stopped (SIGTERM) at a step drawn at random, then continued
in place with `vitlab-train resume=<run dir>`, ends bit-identical to the uninterrupted run — test/loss, val/acc
and every weight — on CPU, under `trainer=ddp_cpu`, and with workers, RandAugment, Mixup/CutMix and EMA.
Also: DDP parity with one process, one W&B run across both halves, and `vitlab-reproduce` continuing an
interrupted row in place and re-running an edited one.

The fault injector (tests/helpers/signal_at_step.py) is `vitlab-train` plus a callback that sends the signal
at the end of the drawn step. The steps come from a generator seeded by VITLAB_TEST_SEED (default 0) and the
test's name; the seed and the drawn step are in every assertion message, so `VITLAB_TEST_SEED=<seed> pytest
tests/test_resume.py -k <test>` replays a failure.
"""

from __future__ import annotations

import json
import os
import random
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml

from conftest import ROOT, TINY, assert_identical, compose_cfg, run_cli

pytestmark = pytest.mark.slow  # starts vitlab processes or trains end to end: not in make test-fast

BASE = [*TINY, "trainer.max_epochs=6", "seed=3"]  # 19 steps per epoch (1,257 digits, batch 64): 114 steps
STEPS = 6 * 19
HARNESS = ROOT / "tests" / "helpers" / "signal_at_step.py"
FAKE_AUG = [  # random images through timm's training transform, with the augmentations that draw randomness
    *TINY,
    "trainer.max_epochs=4",
    "seed=5",
    "data=fake",
    "data.train_size=256",
    "data.batch_size=16",
    "data.num_workers=2",
    "data.augment={randaugment:rand-m9-mstd0.5-inc1,random_erasing:0.25}",
    "module.mixup.mixup_alpha=0.8",
    "module.mixup.cutmix_alpha=1.0",
    "callbacks=ema",
    "callbacks.last_checkpoint.every_n_train_steps=7",
]
FAKE_STEPS = 4 * 16
SEED = int(os.environ.get("VITLAB_TEST_SEED", "0"))


def draw_step(test: str, low: int, high: int) -> tuple[int, str]:
    """A step in [low, high] from a generator seeded by SEED and the test's name (the same draw whichever tests
    run), and the words that replay it."""
    step = random.Random(f"{SEED}/{test}").randint(low, high)
    return step, f"VITLAB_TEST_SEED={SEED} drew step {step} of [{low}, {high}]"


def signal_run(
    args: list[str], run_dir: Path, at: str, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess:
    """The fault injector in its own session (a SIGKILL takes down its process group, DDP ranks included)."""
    full_env = {**os.environ, "WANDB_MODE": "disabled", "PYTHONWARNINGS": "ignore", **(env or {})}
    full_env["VITLAB_TEST_SIGNAL_AT"] = at
    return subprocess.run(
        [sys.executable, str(HARNESS), *args, f"hydra.run.dir={run_dir}", f"paths.log_dir={run_dir.parent}"],
        cwd=ROOT,
        env=full_env,
        capture_output=True,
        text=True,
        timeout=600,
        start_new_session=True,
    )


def train_into(args: list[str], run_dir: Path, env: dict[str, str] | None = None) -> dict:
    run = run_cli("train", [*args, f"hydra.run.dir={run_dir}"], run_dir.parent, env=env)
    assert run.returncode == 0, run.stderr[-3000:]
    return json.loads((run_dir / "results.json").read_text())


def resume(run_dir: Path, env: dict[str, str] | None = None, why: str = "") -> dict:
    run = run_cli("train", [f"resume={run_dir}"], run_dir.parent, env=env)
    assert run.returncode == 0, f"{why}: {run.stderr[-3000:]}"
    return json.loads((run_dir / "results.json").read_text())


def kill_and_resume(args: list[str], run_dir: Path, step: int, drawn: str) -> dict:
    killed = signal_run(args, run_dir, f"{step}:SIGKILL")
    why = f"killed at step {step} ({drawn})"
    assert killed.returncode == -9, f"{why}: {killed.returncode} {killed.stderr[-2000:]}"
    assert not (run_dir / "results.json").exists() and (run_dir / "checkpoints" / "last.ckpt").is_file(), why
    result = resume(run_dir, why=why)
    state = json.loads((run_dir / "run.json").read_text())
    start = state["attempts"][-1]["resumed_from"]
    assert result["status"] == "ok" and result["resumed"] == 1, why
    assert 0 < start["global_step"] <= step, f"{why}: resumed from {start}"
    return start


@pytest.fixture(scope="module")
def reference(tmp_path_factory) -> Path:
    run_dir = tmp_path_factory.mktemp("reference") / "run"
    train_into(BASE, run_dir)
    return run_dir


@pytest.fixture(scope="module")
def reference_ddp(tmp_path_factory) -> Path:
    run_dir = tmp_path_factory.mktemp("reference_ddp") / "run"
    result = train_into([*BASE, "trainer=ddp_cpu"], run_dir)
    assert result["world_size"] == 2
    return run_dir


def test_sigkill_mid_epoch_then_resume_in_place_is_bit_identical(reference: Path, tmp_path: Path) -> None:
    step, drawn = draw_step("sigkill_mid_epoch", 6, STEPS - 2)  # after the first checkpoint (5), before the end
    run_dir = tmp_path / "run"
    start = kill_and_resume([*BASE, "callbacks.last_checkpoint.every_n_train_steps=5"], run_dir, step, drawn)
    # the kill comes at the end of its step, before that step's own checkpoint would be written
    latest = max(m for m in range(1, step) if m % 5 == 0 or m % 19 == 0)
    assert start["global_step"] == latest, f"{drawn}: resumed from {start}"
    assert_identical(run_dir, reference, f"SIGKILL at step {step}, mid-epoch checkpoints ({drawn})")
    assert len(list(run_dir.rglob("results.json"))) == 1 and not list(tmp_path.glob("*/*_train")), drawn


def test_sigkill_under_ddp_then_resume_is_bit_identical(reference_ddp: Path, tmp_path: Path) -> None:
    """The killed-and-resumed DDP run checkpoints every block's activations (`model.grad_checkpointing=true`, kept
    by the resume, which reads the run's own config); the reference runs without. Bit-identical weights and
    metrics then prove at once exact resume under DDP, and that checkpointing (the recompute in backward, with
    drop-path drawn from the sample seeds) changes nothing in a DDP run (tests/test_grad_checkpointing.py)."""
    step, drawn = draw_step("sigkill_under_ddp", 20, STEPS - 2)  # after the first epoch-end checkpoint
    run_dir = tmp_path / "run"
    assert compose_cfg(BASE).model.backbone.drop_path_rate > 0
    start = kill_and_resume([*BASE, "trainer=ddp_cpu", "model.grad_checkpointing=true"], run_dir, step, drawn)
    assert start["global_step"] == 19 * ((step - 1) // 19), f"{drawn}: resumed from {start}"
    config = yaml.safe_load((run_dir / "config_resolved.yaml").read_text())
    assert config["model"]["grad_checkpointing"] is True, drawn
    assert_identical(run_dir, reference_ddp, f"DDP, checkpointed blocks, SIGKILL at step {step} ({drawn})")


def test_sigkill_with_workers_randaugment_mixup_and_ema_then_resume_is_bit_identical(tmp_path: Path) -> None:
    reference = tmp_path / "reference"
    train_into(FAKE_AUG, reference)
    step, drawn = draw_step("sigkill_with_workers", 8, FAKE_STEPS - 2)
    run_dir = tmp_path / "run"
    kill_and_resume(FAKE_AUG, run_dir, step, drawn)
    why = f"workers + RandAugment + Mixup/CutMix + EMA, SIGKILL at step {step} ({drawn})"
    assert_identical(run_dir, reference, why)


def test_sigterm_saves_at_once_and_the_run_continues_in_one_wandb_run(reference: Path, tmp_path: Path) -> None:
    step, drawn = draw_step("sigterm_wandb", 2, STEPS - 2)
    run_dir, env = tmp_path / "run", {"WANDB_MODE": "offline"}
    args = [*BASE, "logger=many"]  # CSV + TensorBoard + W&B: none of them changes the experiment
    stopped = signal_run(args, run_dir, f"{step}:SIGTERM", env=env)
    why = f"SIGTERM at step {step} ({drawn})"
    assert stopped.returncode == 128 + 15, f"{why}: {stopped.returncode} {stopped.stderr[-2000:]}"
    record = json.loads((run_dir / "results.json").read_text())
    assert record["status"] == "interrupted" and record["signal"] == "SIGTERM", f"{why}: {record}"
    ckpt = torch.load(run_dir / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True, mmap=True)
    assert ckpt["global_step"] == step, f"{why}: last.ckpt at step {ckpt['global_step']}"

    result = resume(run_dir, env=env, why=why)
    assert result["status"] == "ok" and result["resumed"] == 1, why
    assert_identical(run_dir, reference, why)
    runs = sorted(p.name for p in (run_dir / "wandb").glob("offline-run-*"))
    assert len(runs) == 2 and len({name.rsplit("-", 1)[1] for name in runs}) == 1, f"{why}: {runs}"  # one run id
    steps = [int(float(r["step"])) for r in csv_rows(run_dir) if r.get("train/loss_step")]
    assert steps == sorted(steps) and len(steps) == len(set(steps)), f"{why}: CSV steps {steps}"


def csv_rows(run_dir: Path) -> list[dict[str, str]]:
    import csv

    with open(run_dir / "csv" / "metrics.csv", newline="") as fh:
        return list(csv.DictReader(fh))


def val_losses(run_dir: Path) -> list[float]:
    return [float(r["val/loss"]) for r in csv_rows(run_dir) if r.get("val/loss")]


def test_ddp_and_one_process_train_on_the_same_images(tmp_path: Path) -> None:
    """Same global batch, same images and augmentations per step, and drop-path on (the default 0.1) drawing each
    image's masks from its own seed (vitlab.models.seeded_drop_path), not per rank: the two differ only in float
    summation order. Tolerance: validation loss within 1e-5 at every epoch, test loss within 1e-4, test accuracy
    within one test image (1/360)."""
    args = [*BASE, "trainer.max_epochs=4"]
    assert compose_cfg(args).model.backbone.drop_path_rate > 0
    one = train_into(args, tmp_path / "one")
    two = train_into([*args, "trainer=ddp_cpu"], tmp_path / "two")
    assert two["world_size"] == 2
    a, b = val_losses(tmp_path / "one"), val_losses(tmp_path / "two")
    assert len(a) == len(b) == 4 and max(abs(x - y) for x, y in zip(a, b, strict=True)) < 1e-5, (a, b)
    assert abs(one["test/loss"] - two["test/loss"]) < 1e-4 and abs(one["test/acc"] - two["test/acc"]) <= 1 / 360


def test_results_record_versions_device_and_the_state_of_the_code(reference: Path) -> None:
    record = json.loads((reference / "results.json").read_text())
    assert set(record["versions"]) >= {"python", "torch", "torchvision", "timm", "pytorch-lightning", "hydra-core"}
    assert record["device"].startswith("cpu: ") and len(record["git_sha"]) == 40
    assert isinstance(record["git_dirty"], bool) and record["git_diff_sha256"]
    assert None not in record.values()


def write_table(path: Path, row_overrides: list[str]) -> Path:
    table = {
        "paper": "demo",
        "table": "resume",
        "title": "A table that is interrupted",
        "source": "made up for the test",
        "metric": "test/acc",
        "datasets": [{"name": "digits", "label": "digits (test)", "overrides": []}],
        "scales": {"smoke": {"seeds": [0], "overrides": [*TINY, "trainer.max_epochs=3"]}},
        "rows": [{"name": "vit", "label": "ViT", "overrides": row_overrides}],
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(table, sort_keys=False))
    return path


def test_reproduce_continues_an_interrupted_row_in_place_and_reruns_an_edited_one(tmp_path: Path) -> None:
    from vitlab.reproduce import load_table, table_dir

    table, logs = write_table(tmp_path / "tables" / "demo" / "resume.yaml", []), tmp_path / "logs"
    spec = load_table(table)
    (job,) = spec.jobs("smoke")
    td = table_dir(logs, spec, "smoke")
    step, drawn = draw_step("reproduce_continues", 2, 3 * 19 - 2)
    stopped = signal_run(list(job.overrides), job.run_dir(td), f"{step}:SIGTERM")  # the row, as the table runs it
    assert stopped.returncode == 143, f"{drawn}: {stopped.stderr[-2000:]}"

    run = run_cli("reproduce", [f"table={table}", "scale=smoke"], logs)
    assert run.returncode == 0, f"{drawn}: {run.stdout[-2000:]}{run.stderr[-2000:]}"
    assert "1 continue in place" in run.stdout, f"{drawn}: {run.stdout}"
    resumed_from = json.loads((job.run_dir(td) / "run.json").read_text())["attempts"][-1]["resumed_from"]
    assert resumed_from["global_step"] == step, f"{drawn}: resumed from {resumed_from}"
    # the epoch the step-th batch ran in: a stop after an epoch's last batch (19, 38) resumes in that epoch
    assert resumed_from["epoch"] == (step - 1) // 19, f"{drawn}: resumed from {resumed_from}"
    result = json.loads((job.run_dir(td) / "results.json").read_text())
    assert result["status"] == "ok" and result["resumed"] == 1 and result["epochs"] == 3, f"{drawn}: {result}"

    write_table(table, ["optim.lr=2e-3"])  # the row is edited: its finished run is not that row any more
    run = run_cli("reproduce", [f"table={table}", "scale=smoke"], logs)
    assert run.returncode == 0, run.stdout[-2000:] + run.stderr[-2000:]
    old = json.loads((job.run_dir(td).with_name("seed0.stale1") / "results.json").read_text())
    new = json.loads((job.run_dir(td) / "results.json").read_text())
    lr = next(float(o.split("=")[1]) for o in new["overrides"] if o.startswith("optim.lr="))
    assert old == result and new["status"] == "ok" and lr == 2e-3
