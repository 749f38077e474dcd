"""End-to-end: the real `vitlab-train` / `vitlab-eval` in subprocesses, on tiny models, CPU only."""

from __future__ import annotations

import csv
import json
import math
import re
import struct
from collections.abc import Iterator
from pathlib import Path

import pytest

from conftest import TINY, run_cli

pytestmark = pytest.mark.slow  # starts vitlab processes or trains end to end: not in make test-fast

# ~10 s on 2 cores; reaches ~0.8 test accuracy on digits (chance: 0.1)
LEARN = [
    *TINY,
    "model.backbone.embed_dim=64",
    "trainer.max_epochs=8",
    "optim.lr=3e-3",
    "scheduler.warmup_epochs=1",
    "data.augment=none",
]


def assert_clean_error(run, *fragments: str) -> None:
    assert run.returncode != 0, run.stdout
    assert "Traceback" not in run.stderr, run.stderr[-3000:]
    for fragment in fragments:
        assert fragment in run.stderr, run.stderr[-3000:]


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """One short digits run shared by the tests that need a finished run."""
    # the bar is asked for, as by default: a pipe is not a terminal, so it must not be drawn
    run = run_cli("train", [*LEARN, "trainer.enable_progress_bar=true"], tmp_path_factory.mktemp("trained"))
    assert run.returncode == 0, run.stderr[-3000:]
    return run


def test_a_non_interactive_run_logs_one_line_per_epoch_and_no_third_party_chatter(trained) -> None:
    output = trained.stdout + trained.stderr
    lines = re.findall(
        r"epoch (\d+)/8  train/loss \S+  val/acc \S+  val/loss \S+  lr \S+  \d+ img/s  elapsed \S+", output
    )
    assert lines == [str(e) for e in range(1, 9)], output[-3000:]
    assert output.count("ETA ") == 7  # every epoch but the last
    (run_dir,) = trained.run_dirs()
    assert len(re.findall(r"\]\[vitlab\]\[INFO\] - epoch \d+/8 ", (run_dir / "train.log").read_text())) == 8
    chatter_lines = ("Tip:", "GPU available", "TPU available", "Seed set to", "weights_only", "srun")
    for chatter in (*chatter_lines, "it/s", "Epoch 1/"):  # the last two: a progress bar
        assert chatter not in output, chatter


def test_short_training_beats_chance_by_a_wide_margin(trained) -> None:
    (result,) = trained.results()
    assert result["status"] == "ok" and "error" not in result  # only a failed run has an error
    assert result["test/acc"] > 0.5, result  # chance is 0.1
    for key in (  # the results.json contract of docs/runs.md: every field filled, no nulls, in a normal run
        "test/acc",
        "val/acc",
        "params/total",
        "params/trainable",
        "params/trainable_no_head",
        "cost/macs_per_image",
        "cost/peak_mem_mb",
        "cost/train_img_per_s",
        "seed",
        "git_sha",
        "overrides",
        "wall_s",
    ):
        assert result.get(key) is not None, key
    assert result["params/trainable_no_head"] == result["params/trainable"] - (64 * 10 + 10)
    assert f"test/acc = {result['test/acc']:.4f}" in trained.stdout
    (run_dir,) = trained.run_dirs()
    logged = [r for r in csv.DictReader((run_dir / "csv" / "metrics.csv").open()) if r.get("cost/macs_per_image")]
    assert len(logged) == 1, "the cost/* numbers reach the loggers once, at the end of fit"
    assert float(logged[0]["cost/macs_per_image"]) == result["cost/macs_per_image"]
    assert float(logged[0]["cost/train_img_per_s"]) == result["cost/train_img_per_s"]
    assert (run_dir / "config_resolved.yaml").is_file() and "${" not in (run_dir / "config_resolved.yaml").read_text()


def test_eval_reproduces_the_test_accuracy_of_the_best_checkpoint(trained, tmp_path) -> None:
    (result,) = trained.results()
    run = run_cli("eval", [f"ckpt_path={result['best_ckpt']}", "trainer.enable_progress_bar=false"], tmp_path)
    assert run.returncode == 0, run.stderr[-3000:]
    (evaluated,) = run.results()
    assert evaluated["status"] == "ok"
    assert evaluated["test/acc"] == result["test/acc"]
    assert evaluated["params/total"] == result["params/total"]


def test_resume_continues_at_the_next_epoch(trained, tmp_path) -> None:
    last = trained.run_dirs()[0] / "checkpoints" / "last.ckpt"
    run = run_cli("train", [*LEARN, "trainer.max_epochs=9", f"ckpt_path={last}"], tmp_path)
    assert run.returncode == 0, run.stderr[-3000:]
    (resumed,) = run.results()
    assert resumed["epochs"] == 9
    rows = list(csv.DictReader((run.run_dirs()[0] / "csv" / "metrics.csv").open()))
    epochs = {int(r["epoch"]) for r in rows if r.get("epoch") and r.get("train/loss_epoch")}
    assert epochs == {8}, epochs  # only the one missing epoch was trained
    assert last.is_file()  # the original run is untouched


def test_resume_with_another_model_is_refused(trained, tmp_path) -> None:
    last = trained.run_dirs()[0] / "checkpoints" / "last.ckpt"
    run = run_cli("train", [*TINY, f"ckpt_path={last}"], tmp_path)
    assert_clean_error(run, "another model configuration", "model.backbone.embed_dim=64")


def test_ddp_cpu_trains_two_processes_into_one_run(tmp_path) -> None:
    run = run_cli("train", [*TINY, "trainer=ddp_cpu", "trainer.enable_progress_bar=false"], tmp_path)
    assert run.returncode == 0, run.stderr[-3000:]
    (result,) = run.results()
    assert result["status"] == "ok" and result["world_size"] == 2
    assert len(run.run_dirs()) == 1 and len(list(tmp_path.rglob("*_train"))) == 1


def test_ddp_inside_a_sweep_keeps_one_directory_per_job(tmp_path) -> None:
    """Lightning re-launches the script for rank 1; in a sweep it must join the job, not re-run the sweep."""
    run = run_cli("train", ["-m", *TINY, "trainer=ddp_cpu", "seed=0,1"], tmp_path)
    assert run.returncode == 0, run.stderr[-3000:]
    results = run.results()
    assert [r["status"] for r in results] == ["ok", "ok"] and {r["world_size"] for r in results} == {2}
    assert len(run.run_dirs()) == 2 and not (tmp_path / "runs").exists()


def test_bf16_mixed_on_cpu_trains(tmp_path) -> None:
    run = run_cli("train", [*TINY, "trainer.precision=bf16-mixed"], tmp_path)
    assert run.returncode == 0, run.stderr[-3000:]
    (result,) = run.results()
    assert result["status"] == "ok" and math.isfinite(result["test/loss"]), result
    (run_dir,) = run.run_dirs()
    assert "precision: bf16-mixed" in (run_dir / "config_resolved.yaml").read_text()
    losses = [float(r["train/loss_step"]) for r in csv.DictReader((run_dir / "csv" / "metrics.csv").open())
              if r.get("train/loss_step")]  # fmt: skip
    assert losses and all(math.isfinite(v) for v in losses)


def wandb_records(path: Path) -> Iterator[bytes]:
    """Protobuf records of an offline `run-*.wandb` file (W&B's leveldb-style log: 32 KiB blocks,
    7-byte record headers <checksum u32, length u16, type u8>; type 1 full, 2-4 first/middle/last)."""
    data, pos, block, buf = path.read_bytes(), 7, 32768, b""
    assert data[:4] == b":W&B"
    while pos + 7 <= len(data):
        if block - pos % block < 7:
            pos += block - pos % block
            continue
        _, length, kind = struct.unpack("<IHB", data[pos : pos + 7])
        chunk, pos = data[pos + 7 : pos + 7 + length], pos + 7 + length
        if kind == 1:
            yield chunk
        elif kind in (2, 3):
            buf = chunk if kind == 2 else buf + chunk
        elif kind == 4:
            yield buf + chunk


def test_wandb_offline_run_holds_resolved_config_and_test_acc(tmp_path) -> None:
    from wandb.proto import wandb_internal_pb2

    run = run_cli("train", [*TINY, "logger=wandb", "tags=[test]"], tmp_path, env={"WANDB_MODE": "offline"})
    assert run.returncode == 0, run.stderr[-3000:]
    (result,) = run.results()
    (run_file,) = tmp_path.rglob("wandb/offline-run-*/run-*.wandb")
    config, summary, config_records = {}, {}, 0
    for data in wandb_records(run_file):
        record = wandb_internal_pb2.Record()
        record.ParseFromString(data)
        kind = record.WhichOneof("record_type")
        if kind in ("config", "summary"):
            items = getattr(record, kind).update
            target = config if kind == "config" else summary
            target.update({item.key: json.loads(item.value_json) for item in items})
            config_records += kind == "config"
    assert config_records == 1  # logged once
    assert config["model"]["backbone"]["img_size"] == 16  # resolved from ${data.img_size}
    assert config["logger"]["wandb"]["tags"] == ["test"]
    assert summary["test/acc"] == pytest.approx(result["test/acc"])
    assert summary["params/total"] == result["params/total"]


def test_multirun_writes_one_result_per_job_and_records_failures(tmp_path) -> None:
    run = run_cli("train", ["-m", *TINY, "data.img_size=16,18"], tmp_path)
    assert run.returncode != 0  # one job failed: the sweep says so at the end ...
    results = run.results()
    assert len(results) == 2  # ... but it went on and both jobs have a results.json
    by_size = {next(o for o in r["overrides"] if o.startswith("data.img_size")): r for r in results}
    assert by_size["data.img_size=16"]["status"] == "ok"
    assert by_size["data.img_size=18"]["status"] == "failed"
    assert "not divisible" in by_size["data.img_size=18"]["error"]


def test_two_job_sweep(tmp_path) -> None:
    run = run_cli("train", ["-m", *TINY, "seed=0,1"], tmp_path)
    assert run.returncode == 0, run.stderr[-3000:]
    results = run.results()
    assert sorted(r["seed"] for r in results) == [0, 1] and all(r["status"] == "ok" for r in results)
    assert all("multiruns" in r["run_dir"] for r in results)


def test_debug_fast_dev_run(tmp_path) -> None:
    run = run_cli("train", [*TINY, "debug=fdr"], tmp_path)
    assert run.returncode == 0, run.stderr[-3000:]
    (result,) = run.results()
    assert result["status"] == "ok" and result["task"] == "debug"


def test_unknown_config_option_is_a_clear_error(tmp_path) -> None:
    run = run_cli("train", ["data=nope"], tmp_path)
    assert_clean_error(run, "nope", "digits")  # Hydra lists the available options
    assert not run.results()


def test_image_size_not_divisible_by_patch_is_a_clear_error(tmp_path) -> None:
    run = run_cli("train", [*TINY, "data.img_size=18"], tmp_path)
    assert_clean_error(run, "data.img_size=18", "model.backbone.patch_size=4")
    (result,) = run.results()
    assert result["status"] == "failed"


@pytest.mark.parametrize(
    ("overrides", "fragments"),
    [
        (["model/mixer=fnet", "model/pos_embed=rope1d"], ["model/pos_embed=rope1d", "model/mixer=fnet"]),
        (
            ["model/mixer=linformer", "model.backbone.dynamic_img_size=true"],
            ["model/mixer=linformer", "dynamic_img_size"],
        ),
        (["model.stem.strides=[2,1,1]"], ["model.stem.strides=[2, 1, 1]", "patch size 4"]),
    ],
    ids=["rope-without-qk", "linformer-dynamic-size", "stem-strides"],
)
def test_incompatible_vix_options_are_clear_errors(tmp_path, overrides: list[str], fragments: list[str]) -> None:
    run = run_cli("train", [*TINY, *overrides], tmp_path)
    assert_clean_error(run, *fragments)
    (result,) = run.results()
    assert result["status"] == "failed"


def test_missing_dataset_folder_is_a_clear_error(tmp_path) -> None:
    run = run_cli("train", [*TINY, "data=cifar10", f"paths.data_dir={tmp_path / 'empty'}"], tmp_path)
    assert_clean_error(run, "data.download=true", "paths.data_dir")


def test_corrupt_checkpoint_is_a_clear_error(tmp_path) -> None:
    bad = tmp_path / "corrupt.ckpt"
    bad.write_bytes(b"\x00garbage" * 100)
    run = run_cli("eval", [f"ckpt_path={bad}"], tmp_path / "eval")
    assert_clean_error(run, "could not be read as a checkpoint")
    run = run_cli("train", [*TINY, f"model.backbone.weights=file:{bad}"], tmp_path / "train")
    assert_clean_error(run, "could not be read as weights")
