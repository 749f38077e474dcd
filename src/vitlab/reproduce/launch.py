"""Running a table's jobs: check that each group composes, launch it as a Hydra multirun, record what failed.

Every group of seeds is one `vitlab-train -m` subprocess (with `parallel=N`, every seed, N side by side), so
whatever launcher the overrides pick (the local one, `hydra/launcher=submitit_local|submitit_slurm`) runs it,
and a crash in one group cannot take the table down. `vitlab-train` writes each job's `results.json` itself,
failures included; a group whose overrides do not even compose never starts, so its jobs get a failed
`results.json` here instead, which the table shows and the next run retries.

A launch that ends non-zero with a job killed in the middle of an attempt (the host's out-of-memory killer's
SIGKILL takes the whole `vitlab-train -m` process with it) is started again, up to the job's `sweep.retries`,
and the job continues in place; a SIGKILL counts as out of memory: half the micro-batch, twice the
accumulation (docs/runs.md#retries). Jobs that crash inside the process are retried by `vitlab-train` itself.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from vitlab.console import console_script
from vitlab.reproduce.jobs import Job, job_status
from vitlab.runs.files import RESULTS_FILE, write_json
from vitlab.runs.state import RunState, is_running

FORWARDED = (signal.SIGINT, signal.SIGTERM, signal.SIGUSR1, signal.SIGUSR2)


class Interrupted(Exception):
    """The table was interrupted by a signal while a launch ran; the launch stopped with `code`."""

    def __init__(self, signum: int, code: int) -> None:
        self.signum, self.code = signum, code
        super().__init__(f"interrupted by {signal.Signals(signum).name} (the running job exited with {code})")


def record_failure(job: Job, table_dir: Path, error: str) -> None:
    """A failed `results.json` for a job that could not start, in the shape `vitlab-train` writes."""
    run_dir = job.run_dir(table_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    write_json(
        run_dir / RESULTS_FILE,
        {"status": "failed", "error": error, "seed": job.seed, "overrides": list(job.overrides), "wall_s": 0.0},
    )


@dataclass
class Launch:
    """One `vitlab-train -m` subprocess; `log` collects its output unless it streams to the terminal.
    `threads` caps the child's intra-op threads (`OMP_NUM_THREADS`), for runs that share the CPU."""

    args: list[str]
    log: Path
    threads: int | None = None
    run_dirs: tuple[Path, ...] = ()  # its jobs' run directories: a job killed mid-attempt is retried

    def command(self) -> list[str]:
        return [*console_script("vitlab-train"), "-m", *self.args]

    def start(self, stream: bool = False) -> subprocess.Popen:
        """Start the child in its own session (so a terminal's Ctrl+C reaches it only through us, once)."""
        self.log.parent.mkdir(parents=True, exist_ok=True)
        env = {**os.environ, "PYTHONUNBUFFERED": "1"}
        if self.threads is not None:
            env["OMP_NUM_THREADS"] = str(self.threads)
        with open(self.log, "a") as out:  # the child keeps its own copy of the descriptor
            out.write(f"\n$ {' '.join(self.command())}\n")
            out.flush()
            target = None if stream else out
            return subprocess.Popen(self.command(), stdout=target, stderr=subprocess.STDOUT if target else None,
                                    env=env, start_new_session=True)  # fmt: skip

    def run(self, stream: bool = False) -> tuple[int, float]:
        """Run to the end; (exit code, seconds). A non-zero exit is expected when a job failed.

        Every interrupt this process receives (Ctrl+C, SIGTERM, SIGUSR1/2) is passed on to the child once, so
        it writes its checkpoint and stops; then `Interrupted` is raised here, and re-running the same
        command continues the table where it stopped."""
        return run_side_by_side([self], 1, stream)[0]


def run_side_by_side(
    launches: Sequence[Launch],
    width: int,
    stream: bool = False,
    started: Callable[[int], None] | None = None,
    finished: Callable[[int, int, float], None] | None = None,
) -> list[tuple[int, float]]:
    """Run `launches` with at most `width` at a time, in order; (exit code, seconds) of each.

    `started(index)` and `finished(index, code, seconds)` are called as each one starts and ends. An
    interrupt is passed on to every running child; none is started after it, and `Interrupted` is raised
    once the running ones have stopped."""
    received: list[int] = []
    running: dict[int, tuple[subprocess.Popen, float]] = {}
    results: dict[int, tuple[int, float]] = {}
    waiting = list(range(len(launches)))

    def forward(signum: int, frame: object) -> None:
        received.append(signum)
        for proc, _ in list(running.values()):
            with contextlib.suppress(ProcessLookupError):
                proc.send_signal(signum)

    previous = {sig: signal.signal(sig, forward) for sig in FORWARDED}
    try:
        while running or (waiting and not received):
            while waiting and not received and len(running) < width:
                index = waiting.pop(0)
                running[index] = (launches[index].start(stream), time.time())
                if started is not None:
                    started(index)
            for index, (proc, began) in list(running.items()):
                code = proc.poll()
                if code is None:
                    continue
                del running[index]
                if code and not received and retry_killed(launches[index], code):
                    waiting.insert(0, index)  # again, first: the killed job continues in place
                    continue
                results[index] = (code, time.time() - began)
                if finished is not None:
                    finished(index, *results[index])
            if running:
                time.sleep(0.2)
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    if received:
        raise Interrupted(received[0], next((code for code, _ in results.values() if code), 0))
    return [results[i] for i in range(len(launches))]


def retry_killed(launch: Launch, code: int) -> bool:
    """Whether `launch` (ended with `code`) runs again: one of its jobs was killed mid-attempt (run.json's latest
    attempt never ended) and has a retry left. The retry is recorded in its run.json, why in the launch log."""
    lines = [line for run_dir in launch.run_dirs if (line := _retry_killed_job(run_dir, code))]
    if lines:
        with open(launch.log, "a") as out:
            out.writelines(f"vitlab-reproduce: {line}\n" for line in lines)
    return bool(lines)


def _retry_killed_job(run_dir: Path, code: int) -> str | None:
    import yaml

    state = RunState.read(run_dir)
    if state is None or not state.attempts or "ended" in state.attempts[-1] or is_running(run_dir):
        return None  # finished, failed (retried in its process), or never started: nothing killed here
    try:
        cfg = yaml.safe_load((run_dir / "config_resolved.yaml").read_text()) or {}
    except (OSError, yaml.YAMLError):
        cfg = {}
    budget = (cfg.get("sweep") or {}).get("retries")
    budget = 1 if budget is None else int(budget)  # a job of a sweep: sweep.retries=null is 1
    if state.retries >= budget:
        return None
    killed = code == -signal.SIGKILL
    halve = killed and _can_halve(cfg)
    state.retry("oom" if killed else "crash", halve)
    state.write(run_dir)
    how = " with half the micro-batch and twice the accumulation" if halve else ""
    return f"{run_dir} was killed (exit {code}); retry {state.retries} of {budget}{how}, continuing in place"


def _can_halve(cfg: dict) -> bool:
    """The killed attempt's per-device micro-batch (data.batch_size / devices x nodes) is even."""
    trainer = cfg.get("trainer") or {}
    world = 1
    for key in ("devices", "num_nodes"):
        value = trainer.get(key)
        world *= value if isinstance(value, int) and value > 0 else 1
    batch = (cfg.get("data") or {}).get("batch_size")
    return isinstance(batch, int) and batch // world >= 2 and (batch // world) % 2 == 0


def group_jobs(jobs: Sequence[Job]) -> dict[str, list[Job]]:
    """Jobs by their seed group (`<row>/<dataset>[/<grid point>]`), the unit `multirun_commands` launches."""
    groups: dict[str, list[Job]] = {}
    for job in jobs:
        groups.setdefault(str(Path(job.id).parent), []).append(job)
    return groups


def statuses(jobs: Sequence[Job], table_dir: Path) -> dict[str, int]:
    counts = {"ok": 0, "failed": 0, "missing": 0, "unfinished": 0, "stale": 0, "running": 0}
    for job in jobs:
        counts[job_status(job, table_dir)] += 1
    return counts
