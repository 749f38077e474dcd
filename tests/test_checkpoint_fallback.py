"""A damaged checkpoint is never the end (issue 23, scope 5): `resume=` with an unreadable `last.ckpt` says so
in one paragraph, names the newest readable checkpoint of the run and the command that takes it, and writes
nothing; `resume.fallback=true` takes it (one log line). `ckpt_path=` and `vitlab-eval` name the readable
checkpoints beside a damaged one. In-process; the CLI chain (train, damage, refuse, fall back) is slow."""

from __future__ import annotations

import argparse
import json
import logging
import os
from pathlib import Path

import pytest
import torch
from omegaconf import OmegaConf

from conftest import TINY, compose_cfg, run_cli
from vitlab.cli.checkpoint import read_checkpoint
from vitlab.cli.in_place import open_attempt
from vitlab.cli.resume import expand_resume_argv
from vitlab.cli.run_dir_claim import ClaimRunDirectory
from vitlab.errors import ConfigError
from vitlab.runs.checkpoint_choice import readable_checkpoints
from vitlab.runs.state import RunState

OVERRIDES = ["tiny=model", "seed=3"]


def _ckpt(path: Path, epoch: int, step: int, mtime: float | None = None) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save({"state_dict": {"w": torch.full((4,), float(step))}, "epoch": epoch, "global_step": step}, path)
    if mtime is not None:
        os.utime(path, (mtime, mtime))
    return path


def _cut(path: Path) -> None:
    """Half a file: what a node that died while copying it leaves."""
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


def _run(tmp_path: Path, last: bool = True, others: bool = True) -> Path:
    """An interrupted vitlab run whose last.ckpt is cut in half; epoch_001 (step 20) and epoch_002 (step 30)."""
    run_dir = tmp_path / "run"
    RunState(overrides=list(OVERRIDES)).write(run_dir)
    (run_dir / "results.json").write_text(json.dumps({"status": "interrupted"}))
    if others:
        _ckpt(run_dir / "checkpoints" / "epoch_002.ckpt", 2, 30, mtime=1_000)  # newest by step, oldest by mtime
        _ckpt(run_dir / "checkpoints" / "epoch_001.ckpt", 1, 20, mtime=2_000)
    if last:
        _cut(_ckpt(run_dir / "checkpoints" / "last.ckpt", 3, 40))
    return run_dir


def _files(run_dir: Path) -> dict[str, tuple[bytes, int]]:
    return {
        str(p.relative_to(run_dir)): (p.read_bytes(), p.stat().st_mtime_ns) for p in run_dir.rglob("*") if p.is_file()
    }


def _one_paragraph(text: str) -> str:
    assert "\n\n" not in text and "Traceback" not in text, text
    return " ".join(text.split())


def test_checkpoints_are_ordered_by_the_step_stored_in_them(tmp_path) -> None:
    folder = tmp_path / "checkpoints"
    _ckpt(folder / "epoch_009.ckpt", 9, 90, mtime=3_000)
    _ckpt(folder / "step.ckpt", 7, 120, mtime=1_000)  # a mid-epoch checkpoint: later in training, older file
    _ckpt(folder / "same_a.ckpt", 7, 120, mtime=500)
    _cut(_ckpt(folder / "cut.ckpt", 10, 200))
    (folder / "last.ckpt.tmp").write_bytes(b"half")  # a write in progress is never a candidate
    (folder / "notes.ckpt").write_text("not a checkpoint")
    found = readable_checkpoints(folder)
    assert [c.path.name for c in found] == ["step.ckpt", "same_a.ckpt", "epoch_009.ckpt"]
    assert found[0].describe() == "step.ckpt (epoch 7, step 120)"


def test_resume_with_a_cut_last_ckpt_names_the_newest_readable_one_and_writes_nothing(tmp_path) -> None:
    """Before: a PytorchStreamReader traceback, and the run's .hydra/hydra.yaml rewritten."""
    run_dir = _run(tmp_path)
    before = _files(run_dir)
    with pytest.raises(ConfigError) as refused:
        expand_resume_argv([f"resume={run_dir}"])
    text = _one_paragraph(str(refused.value))
    assert (
        text.startswith(f"resume={run_dir}: the run's checkpoints/last.ckpt cannot be read (")
        and "Nothing was written" in text
    )
    assert "failed finding central directory" in text and "high likelihood" not in text, text  # torch's first sentence
    assert "checkpoints/epoch_002.ckpt (epoch 2, step 30)" in text, text
    assert f"`vitlab-train resume={run_dir} resume.fallback=true`" in text, text
    assert _files(run_dir) == before


def test_resume_fallback_true_goes_on_to_hydra_with_the_run_directory(tmp_path) -> None:
    run_dir = _run(tmp_path)
    argv = expand_resume_argv([f"resume={run_dir}", "resume.fallback=true"])
    assert argv == [*OVERRIDES, "resume.fallback=true", f"hydra.run.dir={run_dir.resolve()}"]


def test_resume_without_any_readable_checkpoint_offers_to_start_again(tmp_path) -> None:
    run_dir = _run(tmp_path, others=False)
    with pytest.raises(ConfigError) as refused:
        expand_resume_argv([f"resume={run_dir}", "resume.fallback=false"])
    text = _one_paragraph(str(refused.value))
    assert "No other checkpoint of the run can be read" in text and "from its first step" in text, text


def test_a_last_ckpt_holding_pickled_code_is_damaged_too(tmp_path) -> None:
    run_dir = _run(tmp_path, last=False)
    torch.save({"state_dict": {}, "args": argparse.Namespace(lr=0.1)}, run_dir / "checkpoints" / "last.ckpt")
    with pytest.raises(ConfigError, match=r"pickled Python objects .*/epoch_002\.ckpt \(epoch 2, step 30\)"):
        expand_resume_argv([f"resume={run_dir}"])


def test_the_same_directory_started_again_is_refused_before_hydra_writes(tmp_path, capsys) -> None:
    """`hydra.run.dir=<run>` with the run's own overrides (a requeued job, a sweep re-run) is checked too."""
    run_dir = _run(tmp_path)
    config = OmegaConf.create(
        {"hydra": {"run": {"dir": str(run_dir)}, "overrides": {"task": OVERRIDES}}, "task_name": "train"}
    )
    with pytest.raises(SystemExit) as stop:
        ClaimRunDirectory().on_run_start(config)
    err = _one_paragraph(capsys.readouterr().err.strip())
    assert stop.value.code == 2 and f"hydra.run.dir={run_dir}: the run's checkpoints/last.ckpt cannot be read" in err
    OmegaConf.update(config, "resume", {"fallback": True}, force_add=True)
    ClaimRunDirectory().on_run_start(config)  # decided in open_attempt


def test_open_attempt_refuses_without_fallback_and_writes_no_attempt(tmp_path) -> None:
    run_dir = _run(tmp_path)
    before = _files(run_dir)
    with pytest.raises(ConfigError, match=r"last\.ckpt cannot be read"):
        open_attempt(run_dir, OVERRIDES)
    after = _files(run_dir)
    after.pop(".lock", None)  # the lock taken to decide (empty; Hydra's start files are not the run's state)
    assert after == before


def test_open_attempt_with_fallback_continues_from_the_newest_readable_checkpoint(tmp_path, caplog) -> None:
    run_dir = _run(tmp_path)
    with caplog.at_level(logging.WARNING, logger="vitlab"):
        attempt = open_attempt(run_dir, OVERRIDES, fallback=True)
    attempt.release()
    newest = run_dir / "checkpoints" / "epoch_002.ckpt"
    assert attempt.checkpoint == newest and attempt.position == {"epoch": 2, "global_step": 30}
    assert RunState.read(run_dir).attempts[-1]["resumed_from"] == {
        "checkpoint": str(newest),
        "epoch": 2,
        "global_step": 30,
    }
    lines = [r.getMessage() for r in caplog.records if "resume.fallback=true" in r.getMessage()]
    assert len(lines) == 1 and "continuing from epoch_002.ckpt (epoch 2, step 30)" in lines[0], lines
    assert (run_dir / "checkpoints" / "last.ckpt").exists()  # kept: the next checkpoint replaces it


def test_open_attempt_with_fallback_and_nothing_readable_starts_again(tmp_path, caplog) -> None:
    run_dir = _run(tmp_path, others=False)
    with caplog.at_level(logging.WARNING, logger="vitlab"):
        attempt = open_attempt(run_dir, OVERRIDES, fallback=True)
    attempt.release()
    assert attempt.checkpoint is None and RunState.read(run_dir).attempts[-1]["resumed_from"] is None
    assert any("no readable one, starting again at step 0" in r.getMessage() for r in caplog.records)


def test_a_damaged_ckpt_path_names_the_readable_checkpoints_beside_it(tmp_path) -> None:
    """`ckpt_path=` (a warm start) and `vitlab-eval ckpt_path=` read through read_checkpoint."""
    run_dir = _run(tmp_path)
    damaged = run_dir / "checkpoints" / "last.ckpt"
    with pytest.raises(ConfigError) as refused:
        read_checkpoint(damaged)
    text = _one_paragraph(str(refused.value))
    assert text.startswith(f"ckpt_path={damaged} could not be read as a checkpoint"), text
    assert "newest first: epoch_002.ckpt (epoch 2, step 30), epoch_001.ckpt (epoch 1, step 20)" in text, text
    assert f"give one as ckpt_path={damaged.parent}/<name>" in text, text
    lone = tmp_path / "lone" / "model.ckpt"
    _cut(_ckpt(lone, 0, 1))
    with pytest.raises(ConfigError) as refused:
        read_checkpoint(lone)
    assert "Readable checkpoints" not in str(refused.value)


def test_vitlab_eval_with_a_damaged_checkpoint_is_the_same_paragraph(tmp_path) -> None:
    from vitlab.cli.eval import run_config

    run_dir = _run(tmp_path)
    cfg = compose_cfg([f"ckpt_path={run_dir / 'checkpoints' / 'last.ckpt'}"], config_name="eval")
    with pytest.raises(ConfigError, match=r"could not be read as a checkpoint .* epoch_002\.ckpt \(epoch 2, step 30\)"):
        run_config(cfg)


# a short real run: 3 + 1 batches per epoch; resume= keeps them (they are the run's own overrides)
SHORT = ["+trainer.limit_train_batches=3", "+trainer.limit_val_batches=1", "+trainer.limit_test_batches=1"]


@pytest.mark.slow  # the real CLI: train, cut last.ckpt, resume= refused (nothing written), resume.fallback=true
def test_the_cli_refuses_a_cut_last_ckpt_then_falls_back_and_finishes(tmp_path, capsys, monkeypatch) -> None:
    """Two processes (the training and the fallback that trains on); the refusal in between is vitlab-train's
    `main` in this process: it is decided before Hydra or any training starts (exit 2, the paragraph)."""
    from vitlab.cli.train import main

    run_dir = tmp_path / "run"
    args = [*TINY[:1], "trainer.max_epochs=2", *TINY[2:], *SHORT, f"hydra.run.dir={run_dir}"]
    assert run_cli("train", args, tmp_path).returncode == 0
    record = json.loads((run_dir / "results.json").read_text())
    (run_dir / "results.json").write_text(json.dumps({**record, "status": "interrupted"}))  # as after a kill
    _cut(run_dir / "checkpoints" / "last.ckpt")
    (best,) = (run_dir / "checkpoints").glob("epoch_*.ckpt")
    before = _files(run_dir)
    capsys.readouterr()
    monkeypatch.setattr("sys.argv", ["vitlab-train", f"resume={run_dir}", f"paths.log_dir={tmp_path}"])
    with pytest.raises(SystemExit) as refused:
        main()
    assert refused.value.code == 2
    err = _one_paragraph(capsys.readouterr().err.strip())
    assert f"the newest readable checkpoint of the run is checkpoints/{best.name}" in err.lower(), err
    assert _files(run_dir) == before  # .hydra/hydra.yaml, run.json, results.json: untouched
    run = run_cli("train", [f"resume={run_dir}", "resume.fallback=true", "trainer.max_epochs=3"], tmp_path)
    assert run.returncode == 0, run.stderr[-3000:]
    assert "resume.fallback=true:" in run.stderr + run.stdout
    assert json.loads((run_dir / "results.json").read_text())["epochs"] == 3
    attempt = RunState.read(run_dir).attempts[-1]
    assert attempt["status"] == "ok" and attempt["resumed_from"]["checkpoint"] == str(best)
