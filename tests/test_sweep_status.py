"""`vitlab-sweep status` and `best` (docs/runs.md#watching-a-sweep): job states read from run directories.

The directories are written by hand in the formats `vitlab.cli.runner` (results.json), `vitlab.runs.state`
(run.json, `.lock`) and Hydra (`.hydra/overrides.yaml`, `multirun.yaml`) write; one slow test reads a real
`vitlab-train -m` sweep, so the hand-made ones cannot drift from what vitlab writes.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import socket
import time
from pathlib import Path
from typing import Any

import pytest
import yaml

from conftest import TINY, run_cli
from vitlab.cli.sweep import main, table_cells, watch
from vitlab.runs.state import RunLock
from vitlab.runs.sweep_size import sweep_size
from vitlab.runs.sweep_status import JobStatus, SweepStatus, read_sweep

HOST = socket.gethostname()
STAMP = "%Y-%m-%dT%H:%M:%S%z"


def attempt(status: str | None = None, host: str = HOST, wall_s: float = 10.0, slurm: str | None = None) -> dict:
    """One run.json attempt as `RunState.begin` / `end` write it; `status=None`: not ended."""
    entry: dict[str, Any] = {"started": time.strftime(STAMP, time.localtime(time.time() - 60)), "host": host,
                             "pid": 999999, "slurm_job_id": slurm, "resumed_from": None}  # fmt: skip
    if status is not None:
        entry.update(ended=time.strftime(STAMP), status=status, wall_s=wall_s)
    return entry


def make_job(
    run_dir: Path,
    overrides: list[str],
    status: str | None = None,
    attempts: list[dict] | None = None,
    epochs: list[float] = (),
    max_epochs: int = 5,
    extra: dict | None = None,
) -> Path:
    """A run directory as vitlab writes it: .hydra/overrides.yaml, run.json, config, csv log, results.json."""
    (run_dir / ".hydra").mkdir(parents=True)
    (run_dir / ".hydra" / "overrides.yaml").write_text(yaml.safe_dump(overrides))
    (run_dir / "config_resolved.yaml").write_text(
        f"trainer:\n  accelerator: cpu\n  max_epochs: {max_epochs}\nseed: 0\n"
    )
    run = {"overrides": overrides, "wandb_id": "ab12cd34", "created": "", "attempts": attempts or []}
    (run_dir / "run.json").write_text(json.dumps(run))
    (run_dir / ".lock").touch()
    if epochs:
        (run_dir / "csv").mkdir()
        rows = ["epoch,step,train/loss_epoch,val/acc,val/loss"]
        rows += [f"{e},{10 * e + 9},,{acc},0.5\n{e},{10 * e + 9},0.7,," for e, acc in enumerate(epochs)]
        (run_dir / "csv" / "metrics.csv").write_text("\n".join(rows) + "\n")
    if status is not None:
        record = {"status": status, "val/acc": max(epochs) if status == "ok" else None, "test/acc": None,
                  "overrides": overrides, "wall_s": 12.5, "epochs": len(epochs), **(extra or {})}  # fmt: skip
        (run_dir / "results.json").write_text(json.dumps(record))
    return run_dir


def build_table(table: Path) -> RunLock:
    """A `vitlab-reproduce` table folder (eit/mini_digits at scale=mini: 3 rows x 3 seeds) with one job in every
    state; returns the lock that keeps its running job alive."""
    common = ["experiment=eit/mini_digits", "trainer.max_epochs=5"]
    make_job(table / "eit/digits/seed0", [*common, "seed=0"], "ok", [attempt("ok")], [0.5, 0.8, 0.91, 0.93, 0.92])
    make_job(table / "eit/digits/seed1", [*common, "seed=1"], "ok", [attempt("ok")], [0.6, 0.7, 0.85, 0.9, 0.9])
    make_job(table / "eit/digits/seed2", [*common, "seed=2"], "failed", [attempt("failed")], [0.2])
    make_job(table / "eit/digits/seed2.failed1", [*common, "seed=2"], "failed", [attempt("failed")])
    interrupted = [attempt("interrupted", slurm="4242_1")]
    make_job(table / "vit/digits/seed0", [*common, "seed=0"], "interrupted", interrupted, [0.3, 0.5])
    make_job(table / "vit/digits/seed1", [*common, "seed=1"], "pruned", [attempt("pruned")], [0.1])
    running = make_job(table / "vit/digits/seed2", [*common, "seed=2"], None, [attempt("failed"), attempt()], [0.4])
    make_job(table / "vit_no_pos/digits/seed0", [*common, "seed=0"], None, [attempt()], [0.2, 0.3])  # killed
    lock = RunLock(running)
    assert lock.acquire()
    return lock


def states(status: SweepStatus) -> dict[str, str]:
    return {j.name: j.state for j in status.jobs}


def test_a_table_with_every_state(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    table = tmp_path / "outputs" / "reproduce" / "eit" / "mini_digits" / "mini"
    lock = build_table(table)
    try:
        status = read_sweep(table, expected=table_cells(table))
        assert states(status) == {
            "eit/digits/seed0": "done",
            "eit/digits/seed1": "done",
            "eit/digits/seed2": "failed",
            "vit/digits/seed0": "interrupted",
            "vit/digits/seed1": "pruned",
            "vit/digits/seed2": "running",  # its .lock is held
            "vit_no_pos/digits/seed0": "stale",  # an attempt without an end, and nobody holds its lock
            "vit_no_pos/digits/seed1": "pending",
            "vit_no_pos/digits/seed2": "pending",
        }
        jobs = {j.name: j for j in status.jobs}
        assert (jobs["eit/digits/seed0"].epoch, jobs["eit/digits/seed0"].max_epochs) == (5, 5)
        assert jobs["eit/digits/seed0"].best == 0.93 and jobs["vit/digits/seed2"].best == 0.4
        assert jobs["eit/digits/seed2"].retries == 1  # the archived seed2.failed1
        assert jobs["vit/digits/seed2"].retries == 1  # its first attempt failed
        assert jobs["vit/digits/seed0"].slurm_id == "4242_1"
        assert 60 <= jobs["vit/digits/seed2"].wall_s < 120  # 10 s ended + about 60 s of the running attempt
        assert status.differing()["eit/digits/seed1"] == "seed=1"
        assert status.summary() == (
            "9 jobs: 2 done, 1 running, 1 failed, 1 interrupted, 1 pruned, 1 stale, 2 pending; "
            "best val/acc 0.93 (job eit/digits/seed0)"
        )
        with pytest.raises(SystemExit) as exit_:
            main(["status", str(table)])
        assert exit_.value.code == 0
        out = capsys.readouterr().out
        print(out)  # the acceptance output (pytest -s)
        assert re.search(r"^vit/digits/seed1 +pruned +1/5 +0.1000 +12s", out, re.M)
        assert out.rstrip().endswith("(job eit/digits/seed0)")
    finally:
        lock.release()
    assert states(read_sweep(table))["vit/digits/seed2"] == "stale"  # the lock is gone: the process died


def test_a_job_on_another_host_is_running_while_its_files_are_written(tmp_path: Path) -> None:
    make_job(tmp_path / "0", ["seed=0"], None, [attempt(host="node-17")], [0.3])
    assert states(read_sweep(tmp_path))["0"] == "running"
    later = time.time() + 2 * 3600
    assert states(read_sweep(tmp_path, now=later))["0"] == "stale"
    assert states(read_sweep(tmp_path, now=later, stale_after=3 * 3600))["0"] == "running"
    # a requeued job's new attempt, beside the interrupted result of the attempt before it
    make_job(tmp_path / "1", ["seed=1"], "interrupted", [attempt("interrupted"), attempt(host="node-17")], [0.3])
    assert states(read_sweep(tmp_path))["1"] == "running"
    assert states(read_sweep(tmp_path, now=later))["1"] == "stale"  # its process died without an end


def test_retries_count_restarts_after_a_crash_and_results_retries_wins(tmp_path: Path) -> None:
    tries = [attempt("failed"), attempt(), attempt("interrupted"), attempt("ok")]  # failed, killed, preempted
    make_job(tmp_path / "0", ["seed=0"], "ok", tries, [0.5])
    make_job(tmp_path / "1", ["seed=1"], "ok", tries, [0.5], extra={"retries": 7})
    jobs = {j.name: j for j in read_sweep(tmp_path).jobs}
    assert (jobs["0"].retries, jobs["1"].retries) == (2, 7)


def multirun_yaml(folder: Path, task: list[str], subdir: str = "${hydra.job.num}", sweeper: dict | None = None) -> None:
    hydra = {"sweep": {"dir": str(folder), "subdir": subdir}, "overrides": {"task": task},
             "sweeper": sweeper or {"_target_": "hydra._internal.core_plugins.basic_sweeper.BasicSweeper"}}  # fmt: skip
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "multirun.yaml").write_text(yaml.safe_dump({"hydra": hydra, "seed": 0}))


def test_pending_jobs_of_a_numbered_multirun(tmp_path: Path) -> None:
    multirun_yaml(tmp_path, ["optim.lr=1e-3,3e-3,1e-2", "seed=0,1", "trainer.max_epochs=5"])
    make_job(tmp_path / "0", ["optim.lr=0.001", "seed=0"], "ok", [attempt("ok")], [0.5])
    make_job(tmp_path / "1", ["optim.lr=0.001", "seed=1"], "ok", [attempt("ok")], [0.6])
    status = read_sweep(tmp_path)
    assert [j.name for j in status.jobs] == ["0", "1", "2", "3", "4", "5"]
    assert status.counts() == {"done": 2, "pending": 4} and not status.finished()
    assert sweep_size(["a=1,2", "b=range(0,4)", "c=x"]) == 8 and sweep_size(["a=interval(0,1)"]) is None
    optuna = tmp_path / "search"
    multirun_yaml(optuna, ["hparams_search=optuna"], sweeper={"_target_": "vitlab_optuna.Sweeper", "n_trials": 3})
    assert len(read_sweep(optuna, expected=()).jobs) == 3
    named = tmp_path / "named"
    multirun_yaml(named, ["seed=0,1,2"], subdir="seed${seed}")
    make_job(named / "seed0", ["seed=0"], "ok", [attempt("ok")], [0.5])
    assert [j.name for j in read_sweep(named).jobs] == ["seed0"]  # its other folders' names are not known


def test_a_copied_folder_gives_the_same_table(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    table = tmp_path / "here" / "reproduce" / "eit" / "mini_digits" / "mini"
    build_table(table).release()  # nothing runs: a copy would not hold the lock either
    copy = tmp_path / "elsewhere" / "reproduce" / "eit" / "mini_digits" / "mini"
    shutil.copytree(table, copy)
    outputs = []
    for folder in (table, copy):
        with pytest.raises(SystemExit):
            main(["status", str(folder)])
        outputs.append(capsys.readouterr().out)
    assert outputs[0] == outputs[1]
    assert str(tmp_path) not in outputs[0] and "pending" in outputs[0]


def test_best_prints_the_best_finished_jobs_command_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    common = ["hparams_search=optuna", "+model.note=two words", "paths.log_dir=/abs/outputs"]
    make_job(tmp_path / "0", [*common, "optim.lr=0.001"], "ok", [attempt("ok")], [0.5, 0.7], extra={"val/acc": 0.7})
    make_job(tmp_path / "1", [*common, "optim.lr=0.003"], "ok", [attempt("ok")], [0.9], extra={"val/acc": 0.9})
    make_job(tmp_path / "2", [*common, "optim.lr=0.01"], "failed", [attempt("failed")], [0.95], extra={"val/acc": 0.95})
    make_job(tmp_path / "3", [*common, "optim.lr=0.03"], "pruned", [attempt("pruned")], [0.99], extra={"val/acc": 0.99})
    for mode, lr in (("max", "0.003"), ("min", "0.001")):
        with pytest.raises(SystemExit) as exit_:
            main(["best", str(tmp_path), "--mode", mode])
        assert exit_.value.code == 0
        line = capsys.readouterr().out.strip()
        assert shlex.split(line) == ["vitlab-train", "+model.note=two words", f"optim.lr={lr}"], line


@pytest.mark.parametrize(
    ("argv", "says"),
    [
        (["best", "{dir}"], "no finished job has a val/acc"),
        (["best", "{dir}", "--metric", "test/acc"], "no finished job has a test/acc"),
        (["status", "{dir}", "--mode", "up"], "--mode 'up' is not a direction; allowed: max, min"),
        (["status", "{dir}", "--watch", "0"], "--watch 0 is not an interval"),
        (["status", "{dir}", "--stale-after", "-1"], "--stale-after -1 is not a number of minutes"),
        (["status", "{dir}/missing"], "is not a directory"),
        (["status", "{dir}/empty"], "holds no run directory"),
        (["stat", "{dir}"], "invalid choice: 'stat'"),
    ],
)
def test_bad_input_is_one_paragraph_and_exit_2(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], argv: list[str], says: str
) -> None:
    make_job(tmp_path / "0", ["seed=0"], "failed", [attempt("failed")], [0.5])
    (tmp_path / "empty").mkdir()
    with pytest.raises(SystemExit) as exit_:
        main([a.replace("{dir}", str(tmp_path)) for a in argv])
    err = capsys.readouterr().err
    assert exit_.value.code == 2 and says in err and "Traceback" not in err, err
    assert err.startswith("\nvitlab-sweep: error: ")


def test_watch_refreshes_until_nothing_runs_or_waits() -> None:
    states_seen = iter([["running", "pending"], ["done", "running"], ["done", "failed"], ["done", "done"]])
    shown, slept = [], []

    def read() -> SweepStatus:
        return SweepStatus([JobStatus(str(i), s) for i, s in enumerate(next(states_seen))])

    last = watch(read, lambda s: shown.append(s.counts()), 0.01, sleep=slept.append)
    assert shown == [{"running": 1, "pending": 1}, {"done": 1, "running": 1}, {"done": 1, "failed": 1}]
    assert slept == [0.01, 0.01] and last.finished()


@pytest.mark.slow
def test_a_real_multirun(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """Three tiny jobs of `vitlab-train -m`, one refused (no training batch): what the reader sees matches."""

    sweep = tmp_path / "sweep"
    args = [*TINY, "trainer.max_epochs=2", "+trainer.limit_train_batches=0,3,4", "+trainer.limit_val_batches=2",
            f"hydra.sweep.dir={sweep}"]  # fmt: skip
    run = run_cli("train", ["-m", *args], tmp_path, env={"OMP_NUM_THREADS": "1"})
    assert run.returncode == 1, run.stderr[-2000:]  # a sweep with a failed job exits non-zero
    status = read_sweep(sweep)
    assert states(status) == {"0": "failed", "1": "done", "2": "done"}
    results = {j.name: json.loads((sweep / j.name / "results.json").read_text()) for j in status.jobs}
    for name in ("1", "2"):
        job = next(j for j in status.jobs if j.name == name)
        assert (job.epoch, job.max_epochs, job.best) == (2, 2, results[name]["val/acc"])
    assert status.differing() == {
        "0": "limit_train_batches=0",
        "1": "limit_train_batches=3",
        "2": "limit_train_batches=4",
    }
    best = max(("1", "2"), key=lambda name: results[name]["val/acc"])  # first of equals, as status.best()
    with pytest.raises(SystemExit):
        main(["best", str(sweep)])
    words = shlex.split(capsys.readouterr().out.strip())
    assert words[0] == "vitlab-train" and f"+trainer.limit_train_batches={int(best) + 2}" in words
    assert not [w for w in words if w.startswith(("paths.", "trainer.enable_progress_bar")) or os.fspath(tmp_path) in w]
