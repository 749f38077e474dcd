"""Against a real SLURM (a one-node cluster on localhost, scripts/slurm_local.sh): a sweep through Hydra's
submitit launcher; a job preempted with `scontrol requeue` continues in place and ends identical to its
unpreempted twin; a job whose time limit comes first is warned, requeued by vitlab, and finishes.

Each test bounds its wait and cancels its jobs on the way out (submitit waits forever for a job that ended
without a result when SLURM has no accounting, as here)."""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from conftest import ROOT, TINY, assert_identical

pytestmark = pytest.mark.slurm
SCRIPT = ROOT / "scripts" / "slurm_local.sh"


ASK = "VITLAB_TEST_SLURM"


def local_slurm(*args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(SCRIPT), *args], capture_output=True, text=True, timeout=timeout)


@pytest.fixture(scope="module")
def slurm() -> Iterator[None]:
    """A SLURM that accepts jobs. One already running (CI starts it) is used and left running. Otherwise only
    when asked (VITLAB_TEST_SLURM=1, as root) a one-node SLURM is installed (apt) and started here, and the
    daemons started here are stopped when these tests end. Else the tests are skipped, with the reason: the
    suite changes nothing on the machine unasked."""
    if shutil.which("sbatch") and local_slurm("status").returncode == 0:
        yield
        return
    if os.environ.get(ASK) != "1":
        pytest.skip(
            f"no SLURM accepts jobs here; {ASK}=1 (as root) lets the tests install slurm-wlm + munge (apt), start "
            "a one-node SLURM on localhost and stop it afterwards, or start one: `sudo scripts/slurm_local.sh start`"
        )
    if os.geteuid() != 0:
        pytest.fail(f"{ASK}=1 but not root: the local SLURM needs root (`sudo scripts/slurm_local.sh start`)")
    before = set(local_slurm("running").stdout.split())
    try:
        started = local_slurm("start", timeout=600)
        if started.returncode != 0:
            pytest.fail(f"{ASK}=1 but the local SLURM could not start: {started.stderr.strip()[-500:]}")
        yield
    finally:  # what ran before stays; also after a start that failed half-way
        ours = [d for d in local_slurm("running").stdout.split() if d not in before]
        if ours:
            stopped = local_slurm("stop", *ours)
            assert stopped.returncode == 0, f"could not stop {ours}: {stopped.stderr}"


@pytest.fixture
def job_name() -> Iterator[str]:
    """A name for this test's SLURM jobs; whatever is left of them is cancelled afterwards."""
    name = f"vitlab-test-{uuid.uuid4().hex[:8]}"
    yield name
    subprocess.run(["scancel", f"--name={name}"], capture_output=True)


def launcher(name: str, *extra: str) -> list[str]:
    return [
        "hydra/launcher=submitit_slurm",
        "hydra.launcher.partition=debug",
        f"hydra.launcher.name={name}",
        "hydra.launcher.cpus_per_task=1",
        "hydra.launcher.timeout_min=10",
        *extra,
    ]


def start_sweep(args: list[str], log_dir: Path) -> subprocess.Popen:
    env = {**os.environ, "WANDB_MODE": "disabled", "PYTHONWARNINGS": "ignore"}
    return subprocess.Popen(
        [sys.executable, "-m", "vitlab.cli.train", "-m", *args, f"paths.log_dir={log_dir}"],
        cwd=ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )


def finish(proc: subprocess.Popen, timeout: float) -> str:
    try:
        out, _ = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        out, _ = proc.communicate()
        pytest.fail(f"the sweep did not finish in {timeout:.0f} s:\n{out[-3000:]}")
    assert proc.returncode == 0, out[-3000:]
    return out


def wait_for(proc: subprocess.Popen, root: Path, pattern: str, timeout: float) -> Path:
    """The first file matching `pattern` under `root`; fails with the sweep's output when none comes in time or
    the sweep ends first."""
    deadline = time.time() + timeout
    while time.time() < deadline and proc.poll() is None:
        found = sorted(root.glob(pattern))
        if found:
            return found[0]
        time.sleep(0.2)
    found = sorted(root.glob(pattern))
    if found:
        return found[0]
    ended = f"the sweep ended ({proc.returncode})" if proc.poll() is not None else f"within {timeout:.0f} s"
    proc.kill()
    out, _ = proc.communicate()
    logs = sorted(p for p in root.rglob("*") if p.suffix in (".log", ".out", ".err") and p.is_file())
    tails = "".join(f"\n--- {p}:\n{p.read_text(errors='replace')[-1500:]}" for p in logs[-4:])
    pytest.fail(f"nothing matched {root}/{pattern}, {ended}:\n{out[-3000:]}{tails}")


def test_a_two_job_sweep_runs_through_the_submitit_launcher(slurm, job_name: str, tmp_path: Path) -> None:
    sweep = tmp_path / "sweep"
    proc = start_sweep([*TINY, "seed=0,1", *launcher(job_name), f"hydra.sweep.dir={sweep}"], tmp_path)
    finish(proc, timeout=300)
    results = [json.loads((sweep / str(n) / "results.json").read_text()) for n in (0, 1)]
    assert [r["status"] for r in results] == ["ok", "ok"] and [r["seed"] for r in results] == [0, 1]
    attempts = [json.loads((sweep / str(n) / "run.json").read_text())["attempts"] for n in (0, 1)]
    assert all(len(a) == 1 and a[0]["slurm_job_id"] for a in attempts)  # each ran as a SLURM job


def test_a_preempted_job_continues_in_place_and_ends_identical(slurm, job_name: str, tmp_path: Path) -> None:
    """Job 1 is requeued (SIGTERM, then SLURM puts it back in the queue) once it has a checkpoint; job 0 is its
    unpreempted twin (they differ only in the logging cadence). The sweep directory is Hydra's default, with
    `${now:...}` in it: the requeued job must find the same one."""
    args = [*TINY, "trainer.max_epochs=12", "seed=3", "trainer.log_every_n_steps=10,11", *launcher(job_name)]
    proc = start_sweep(args, tmp_path)
    last = wait_for(proc, tmp_path, "multiruns/*/*/1/checkpoints/last.ckpt", timeout=240)
    run_dir = last.parents[1]
    job_id = json.loads((run_dir / "run.json").read_text())["attempts"][0]["slurm_job_id"]
    scontrol("requeue", str(job_id))
    finish(proc, timeout=420)

    assert len(list(tmp_path.glob("multiruns/*/*/1"))) == 1  # one directory for the job, both attempts in it
    state = json.loads((run_dir / "run.json").read_text())
    first, second = state["attempts"][0], state["attempts"][-1]
    assert first["status"] == "interrupted" and first["signal"] == "SIGTERM", state
    assert second["resumed_from"] and second["slurm_job_id"] == str(job_id), state
    assert json.loads((run_dir / "results.json").read_text())["resumed"] >= 1
    assert_identical(run_dir, run_dir.with_name("0"), f"requeued at step {second['resumed_from']['global_step']}")


def test_a_job_that_reaches_its_time_limit_is_requeued_and_finishes(slurm, job_name: str, tmp_path: Path) -> None:
    """Once the job trains, it is frozen (SIGSTOP) and its time limit cut to two minutes (`scontrol update`),
    with the warning 90 s before it: SLURM sends the warning at its first 30 s limit check whose next check
    would be too late (`now + 30 + 90 >= end`), so at once, and long before the limit itself (SLURM continues
    the stopped process as it signals it; else the test does once the SIGUSR2 is pending). vitlab saves,
    requeues the job (it goes back to the queue: its limit is restored there) and the job continues in place
    to the end.

    Frozen, the job cannot finish before SLURM's check comes, however fast the machine, so it needs only a few
    epochs (before: 120, to outlast up to a minute of checks on a fast machine)."""
    sweep = tmp_path / "sweep"
    extra = ["hydra.launcher.signal_delay_s=90"]
    args = [*TINY, "trainer.max_epochs=6", "seed=0", *launcher(job_name, *extra), f"hydra.sweep.dir={sweep}"]
    proc = start_sweep(args, tmp_path)
    wait_for(proc, sweep, "0/checkpoints/last.ckpt", timeout=240)
    (attempt,) = json.loads((sweep / "0" / "run.json").read_text())["attempts"]
    job_id, pid = attempt["slurm_job_id"], int(attempt["pid"])  # pid: the training process, on this node
    os.kill(pid, signal.SIGSTOP)
    try:
        scontrol("update", f"jobid={job_id}", "TimeLimit=2")
        warned = wait_for_warning(sweep / "0" / "run.json", pid, timeout=75)  # two checks, a loaded machine
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGCONT)
    assert warned, f"SLURM sent no SIGUSR2 to job {job_id} (pid {pid}) within 75 s of cutting its time limit"
    while "interrupted" not in (sweep / "0" / "run.json").read_text() and proc.poll() is None:
        time.sleep(0.2)
    restore = subprocess.run(["scontrol", "update", f"jobid={job_id}", "TimeLimit=10"], capture_output=True, text=True)
    # a job that already ended needs no limit back; whether it ended right is what the asserts below check
    assert restore.returncode == 0 or "already finished" in restore.stderr, restore.stderr
    finish(proc, timeout=420)

    state = json.loads((sweep / "0" / "run.json").read_text())
    result = json.loads((sweep / "0" / "results.json").read_text())
    assert result["status"] == "ok" and result["epochs"] == 6 and result["resumed"] >= 1, state
    first = state["attempts"][0]
    assert first["status"] == "interrupted" and first["signal"] == "SIGUSR2", state  # the time-limit warning
    assert state["attempts"][1]["resumed_from"]["global_step"] > 0, state


def wait_for_warning(run_json: Path, pid: int, timeout: float) -> bool:
    """Whether, within `timeout`, the run recorded its interruption or SIGUSR2 became pending in the stopped
    process `pid` (/proc's ShdPnd: sent to the process, SigPnd: to its main thread; not yet delivered)."""
    deadline, bit = time.time() + timeout, 1 << (signal.SIGUSR2 - 1)
    while time.time() < deadline:
        if "interrupted" in run_json.read_text():
            return True
        try:
            status = Path(f"/proc/{pid}/status").read_text()
        except FileNotFoundError:  # it went on (SLURM's SIGCONT) and ended: run.json says how
            return "interrupted" in run_json.read_text()
        pending = [int(line.split()[1], 16) for line in status.splitlines() if line.startswith(("ShdPnd", "SigPnd"))]
        if any(mask & bit for mask in pending):
            return True
        time.sleep(0.2)
    return False


def scontrol(*args: str) -> None:
    done = subprocess.run(["scontrol", *args], capture_output=True, text=True)
    assert done.returncode == 0, f"scontrol {' '.join(args)}: {done.stderr}"


def test_two_slurm_jobs_pull_trials_from_one_optuna_study_and_a_rerun_continues_it(
    slurm, job_name: str, tmp_path: Path
) -> None:
    """`hydra.sweeper.workers=2`: two SLURM jobs share one study (a journal file) until `n_trials` are started;
    each trial runs once, in its own `trial_<number>` folder, in one of the two jobs. The same command again
    continues the study with `n_trials` more (docs/reproduce.md#many-jobs-one-study)."""
    import optuna

    from vitlab.training.optuna_pruning import open_storage

    sweep = tmp_path / "sweep"
    short = ["+trainer.limit_train_batches=3", "+trainer.limit_val_batches=2", "+trainer.limit_test_batches=1"]
    search = [
        "hparams_search=optuna",
        "hydra.sweeper.workers=2",
        "hydra.sweeper.n_trials=4",
        "hydra.sweeper.study_name=w",
    ]
    args = [*search, *TINY, *short, *launcher(job_name), f"hydra.sweep.dir={sweep}"]
    jobs: set[str] = set()
    for total in (4, 8):
        finish(start_sweep(args, tmp_path), timeout=420)
        study = optuna.load_study(study_name="w", storage=open_storage(str(tmp_path / "optuna" / "w.journal")))
        assert sorted(t.number for t in study.trials) == list(range(total))
        assert {t.state.name for t in study.trials} == {"COMPLETE"}, [(t.number, t.state.name) for t in study.trials]
        assert sorted(p.name for p in sweep.glob("trial_*")) == sorted(f"trial_{n}" for n in range(total))
        for n in range(total):  # each trial ran once: one attempt, in one of this command's SLURM jobs
            (attempt,) = json.loads((sweep / f"trial_{n}" / "run.json").read_text())["attempts"]
            assert json.loads((sweep / f"trial_{n}" / "results.json").read_text())["status"] == "ok"
            jobs.add(str(attempt["slurm_job_id"]))
        assert sorted(p.name for p in sweep.glob("worker_*")) == ["worker_0", "worker_1"]
    # submitit's job array: `<array>_<task>`, one task per worker; 2 per command, and nothing else ran a trial
    submitted = {p.name for p in (sweep / ".submitit").iterdir() if re.fullmatch(r"\d+_\d+", p.name)}
    assert len(submitted) == 4 and jobs <= submitted, (jobs, submitted)
    assert len(jobs) >= 3, (jobs, submitted)  # side by side: both jobs of a command ran trials (here: all four)
