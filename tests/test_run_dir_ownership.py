"""A run directory is vitlab's or it is refused (issue 23, scope 1): before Hydra writes `.hydra/`, a directory
that holds something other than a readable vitlab run of the same experiment is refused with one paragraph
— what is there and the ways out — and `overwrite=true` moves its contents aside instead (never deletes).
In-process through the Hydra callback and `open_attempt`; one CLI chain at the end (slow)."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import torch
from omegaconf import OmegaConf

from conftest import TINY, run_cli
from vitlab.cli.in_place import open_attempt
from vitlab.cli.run_dir_claim import ClaimRunDirectory
from vitlab.errors import ConfigError
from vitlab.runs.state import RunState


def _config(run_dir: Path, overrides: list[str] | None = None, task: str = "train", **flags: object):
    """The parts of Hydra's config the callback reads, as Hydra hands them over."""
    node = {
        "hydra": {"run": {"dir": str(run_dir)}, "sweep": {"dir": str(run_dir)}, "overrides": {"task": overrides or []}},
        "task_name": task,
        "overwrite": flags.get("overwrite", False),
        "resume": {"fallback": flags.get("fallback", False)},
    }
    return OmegaConf.create(node)


def _claim(run_dir: Path, overrides: list[str] | None = None, task: str = "train", **flags: object) -> None:
    ClaimRunDirectory().on_run_start(_config(run_dir, overrides, task, **flags))


def _refusal(capsys, call, *args, **kwargs) -> str:
    """Exit 2 and one paragraph (no traceback) on stderr; its text, whitespace-normalised."""
    with pytest.raises(SystemExit) as stop:
        call(*args, **kwargs)
    err = capsys.readouterr().err.strip()
    assert stop.value.code == 2, stop.value.code
    assert err.startswith("vitlab: error: ") and "\n\n" not in err and "Traceback" not in err, err
    return " ".join(err.split())


def _foreign(run_dir: Path) -> dict[str, bytes]:
    """Another tool's run: results, a checkpoint and a config, but no run.json. Returns its files' bytes."""
    (run_dir / "checkpoints").mkdir(parents=True)
    (run_dir / "results.json").write_text(json.dumps({"status": "failed", "tool": "other"}))
    (run_dir / "checkpoints" / "last.ckpt").write_bytes(b"not vitlab's" * 10)
    (run_dir / "config.yaml").write_text("lr: 0.1\n")
    return _snapshot(run_dir)


def _snapshot(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def test_another_tools_run_directory_is_refused_naming_what_is_there_and_the_ways_out(tmp_path, capsys) -> None:
    """Before: exit 0, no warning, results.json, last.ckpt and the config replaced."""
    run_dir = tmp_path / "theirs"
    before = _foreign(run_dir)
    stamps = {p: p.stat().st_mtime_ns for p in run_dir.rglob("*")}
    err = _refusal(capsys, _claim, run_dir)
    assert f"hydra.run.dir={run_dir} holds checkpoints/, config.yaml, results.json" in err, err
    assert "no run.json" in err and "Nothing was written" in err, err
    assert "another hydra.run.dir" in err and f"`vitlab-train resume={run_dir}`" in err and "overwrite=true" in err, err
    assert _snapshot(run_dir) == before and {p: p.stat().st_mtime_ns for p in run_dir.rglob("*")} == stamps
    assert sorted(p.name for p in tmp_path.iterdir()) == ["theirs"]  # nothing moved, nothing beside it


def test_a_vitlab_run_whose_run_json_cannot_be_read_is_refused(tmp_path, capsys) -> None:
    (tmp_path / "checkpoints").mkdir()
    (tmp_path / "checkpoints" / "last.ckpt").write_bytes(b"x")
    (tmp_path / "run.json").write_text('{"overrides": ["optim.lr=0.1"')  # cut short
    err = _refusal(capsys, _claim, tmp_path)
    assert "its run.json cannot be read" in err and "checkpoints/, run.json" in err, err


def test_many_names_are_shortened_in_the_paragraph(tmp_path, capsys) -> None:
    for i in range(9):
        (tmp_path / f"f{i}.txt").write_text("x")
    err = _refusal(capsys, _claim, tmp_path)
    assert "f0.txt, f1.txt, f2.txt, f3.txt, f4.txt and 4 more" in err, err


def test_overwrite_moves_the_old_contents_aside_whole_and_says_where(tmp_path, capsys) -> None:
    run_dir = tmp_path / "theirs"
    before = _foreign(run_dir)
    _claim(run_dir, overwrite=True)
    (moved,) = tmp_path.glob("theirs.replaced-*")
    assert _snapshot(moved) == before and list(run_dir.iterdir()) == []
    assert f"the old contents of {run_dir} were moved to {moved}" in capsys.readouterr().err
    _claim(run_dir, overwrite=True)  # now empty: nothing more to move
    assert len(list(tmp_path.glob("theirs.replaced-*"))) == 1


def test_a_finished_run_names_overwrite_as_a_way_out_and_overwrite_keeps_its_result(tmp_path, capsys) -> None:
    RunState(overrides=["seed=1"]).write(tmp_path / "done")
    (tmp_path / "done" / "results.json").write_text(json.dumps({"status": "ok", "test/acc": 0.9}))
    err = _refusal(capsys, _claim, tmp_path / "done", ["seed=1"])
    assert "holds a finished run" in err and "overwrite=true" in err, err
    _claim(tmp_path / "done", ["seed=1"], overwrite=True)
    (moved,) = tmp_path.glob("done.replaced-*")
    assert json.loads((moved / "results.json").read_text()) == {"status": "ok", "test/acc": 0.9}


def test_another_experiment_is_refused_or_moved_aside_with_overwrite(tmp_path, capsys) -> None:
    RunState(overrides=["optim.lr=0.001"]).write(tmp_path / "run")
    err = _refusal(capsys, _claim, tmp_path / "run", ["optim.lr=0.5"])
    assert "holds another experiment" in err and "overwrite=true" in err, err
    _claim(tmp_path / "run", ["optim.lr=0.5"], overwrite=True)
    assert RunState.read(next(tmp_path.glob("run.replaced-*"))).overrides == ["optim.lr=0.001"]


def test_overwrite_never_moves_the_folder_vitlab_was_started_in(tmp_path, capsys, monkeypatch) -> None:
    before = _foreign(tmp_path / "project")
    (tmp_path / "project" / "src").mkdir()
    monkeypatch.chdir(tmp_path / "project" / "src")
    for run_dir in (Path(".."), tmp_path / "project"):
        err = _refusal(capsys, _claim, run_dir, overwrite=True)
        assert "is the directory vitlab was started in, or holds it; its contents are not moved" in err, err
    assert _snapshot(tmp_path / "project") == before and not list(tmp_path.glob("*.replaced-*"))


@pytest.mark.parametrize("value", ["yes", 1, "maybe"])
def test_overwrite_must_be_a_boolean(tmp_path, capsys, value) -> None:
    _foreign(tmp_path / "theirs")
    err = _refusal(capsys, _claim, tmp_path / "theirs", overwrite=value)
    assert f"overwrite={value!r} is not allowed: it must be true or false" in err, err
    assert not list(tmp_path.glob("*.replaced-*"))


def test_vitlab_eval_writes_only_into_an_empty_directory(tmp_path, capsys) -> None:
    (tmp_path / "notes.txt").write_text("mine")
    err = _refusal(capsys, _claim, tmp_path, task="eval")
    assert "holds notes.txt (vitlab-eval writes only into an empty directory)" in err, err
    assert "resume=" not in err and "overwrite=true" in err, err  # eval has no resume
    assert (tmp_path / "notes.txt").read_text() == "mine"


def test_a_vitlab_eval_directory_is_not_a_training_run(tmp_path, capsys) -> None:
    (tmp_path / "config_resolved.yaml").write_text("task_name: eval\n")
    (tmp_path / "results.json").write_text(json.dumps({"status": "failed"}))
    err = _refusal(capsys, _claim, tmp_path)
    assert "not a vitlab training run" in err, err


def test_what_vitlab_may_write_into(tmp_path, capsys) -> None:
    """Absent, empty, Hydra's start files only (a run that stopped before its first file), or a readable run of
    the same experiment (overrides compared as Hydra records them)."""
    _claim(tmp_path / "absent" / "run")
    (tmp_path / "empty").mkdir()
    _claim(tmp_path / "empty")
    (tmp_path / "started" / ".hydra").mkdir(parents=True)
    (tmp_path / "started" / ".hydra" / "config.yaml").write_text("a: 1\n")
    (tmp_path / "started" / "train.log").write_text("log\n")
    (tmp_path / "started" / ".lock").write_text("")
    _claim(tmp_path / "started")
    RunState(overrides=["optim.lr=1e-3", "trainer.devices=1"]).write(tmp_path / "ours")
    (tmp_path / "ours" / "results.json").write_text(json.dumps({"status": "interrupted"}))
    _claim(tmp_path / "ours", ["optim.lr=0.001", "trainer.devices=2"], overwrite=True)  # continued, not moved
    assert capsys.readouterr().err == ""
    assert not list(tmp_path.glob("*.replaced-*"))


@pytest.mark.parametrize(("variable", "value"), [("LOCAL_RANK", "1"), ("NODE_RANK", "1"), ("SLURM_PROCID", "3")])
def test_ranks_above_zero_never_refuse_or_move(tmp_path, capsys, monkeypatch, variable, value) -> None:
    """They join the directory rank 0 claimed; only rank 0 may move anything (a second node started by hand
    has NODE_RANK=1 before Lightning sets its RANK)."""
    before = _foreign(tmp_path / "theirs")
    for name in ("RANK", "LOCAL_RANK", "SLURM_PROCID", "JSM_NAMESPACE_RANK", "NODE_RANK", "GROUP_RANK"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv(variable, value)
    _claim(tmp_path / "theirs", overwrite=True)
    assert _snapshot(tmp_path / "theirs") == before and capsys.readouterr().err == ""
    monkeypatch.setenv(variable, "0")
    _claim(tmp_path / "theirs", overwrite=True)  # rank 0 (of any launcher) does move
    assert list(tmp_path.glob("theirs.replaced-*"))


def test_a_sweep_directory_of_another_tool_is_refused_and_vitlabs_own_is_continued(tmp_path, capsys) -> None:
    callback = ClaimRunDirectory()
    (tmp_path / "theirs").mkdir()
    (tmp_path / "theirs" / "multirun.yaml").write_text("hydra:\n  callbacks: {}\n")
    err = _refusal(capsys, callback.on_multirun_start, _config(tmp_path / "theirs"))
    assert f"hydra.sweep.dir={tmp_path / 'theirs'} holds a multirun.yaml that vitlab did not write" in err, err
    (tmp_path / "ours" / "0").mkdir(parents=True)
    (tmp_path / "ours" / "multirun.yaml").write_text("_target_: vitlab.cli.hydra_callbacks.CheckRunDirectory\n")
    callback.on_multirun_start(_config(tmp_path / "ours"))
    callback.on_multirun_start(_config(tmp_path / "theirs", overwrite=True))
    assert (next(tmp_path.glob("theirs.replaced-*")) / "multirun.yaml").exists()
    assert list((tmp_path / "theirs").iterdir()) == []


def test_a_sweep_jobs_folder_of_another_tool_is_refused_before_vitlab_writes(tmp_path) -> None:
    """Hydra writes a job's .hydra/ before any callback sees the job folder, so jobs are claimed in
    open_attempt: refused with the paragraph (the sweep records the job failed and goes on), run.json unwritten."""
    job = tmp_path / "sweep" / "0"
    before = _foreign(job)
    (job / ".hydra").mkdir()  # what Hydra just wrote for this job
    with pytest.raises(ConfigError, match=r"holds checkpoints/, config.yaml, results.json \(no run.json"):
        open_attempt(job, ["seed=0"])
    assert not (job / "run.json").exists() and {k: v for k, v in _snapshot(job).items()} == before
    attempt = open_attempt(job, ["seed=0"], overwrite=True)
    attempt.release()
    (moved,) = (tmp_path / "sweep").glob("0.replaced-*")
    assert _snapshot(moved) == before and (job / ".hydra").is_dir()  # this job's .hydra stays
    assert RunState.read(job).overrides == ["seed=0"] and attempt.checkpoint is None


@pytest.mark.slow  # the real CLI: the refusal happens before Hydra writes .hydra/, and overwrite=true trains
def test_the_cli_refuses_a_foreign_directory_before_hydra_writes_and_overwrite_runs_there(
    tmp_path, capsys, monkeypatch
) -> None:
    """The refusal is vitlab-train's `main` in this process, through Hydra's real start (the callback as the
    config registers it; exit 2 before `.hydra/`); `overwrite=true`, which trains, is a process of its own."""
    from vitlab.cli.train import main

    run_dir = tmp_path / "theirs"
    before = _foreign(run_dir)
    args = [*TINY, f"hydra.run.dir={run_dir}", f"paths.log_dir={tmp_path}"]
    monkeypatch.setattr("sys.argv", ["vitlab-train", *args])
    with pytest.raises(SystemExit) as refused:
        main()
    err = capsys.readouterr().err
    assert refused.value.code == 2 and "Traceback" not in err, err[-3000:]
    assert f"hydra.run.dir={run_dir} holds checkpoints/, config.yaml, results.json" in " ".join(err.split())
    assert _snapshot(run_dir) == before and not (run_dir / ".hydra").exists()
    short = ["+trainer.limit_train_batches=2", "+trainer.limit_val_batches=1", "+trainer.limit_test_batches=1"]
    run = run_cli("train", [*TINY, *short, f"hydra.run.dir={run_dir}", "overwrite=true"], tmp_path)
    assert run.returncode == 0, run.stderr[-3000:]
    (moved,) = tmp_path.glob("theirs.replaced-*")
    assert _snapshot(moved) == before and f"were moved to {moved}" in run.stderr
    assert json.loads((run_dir / "results.json").read_text())["status"] == "ok"
    ckpt = torch.load(run_dir / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)
    assert ckpt["epoch"] == 0 and os.path.getsize(run_dir / "run.json") > 0
