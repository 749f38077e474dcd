"""Jobs of a table: stable ids, deterministic run directories, and which of them still have to run.

Every job's directory is `<table dir>/<row>/<dataset>[/<grid point>]/seed<k>`, so re-running a table finds
the `results.json` of earlier attempts: jobs whose status is ok are skipped; unfinished ones (interrupted, or
killed before they wrote a result) are launched again in their own directory and continue from their
`last.ckpt`; failed and missing ones run. A failed run's directory is moved aside first (`archive`), keeping
its error for inspection, and so is a run made with other overrides than the table's current row (`stale`:
the row was edited since), which then runs again.
"""

from __future__ import annotations

import re
import shlex
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from vitlab.runs.files import RESULTS_FILE, read_results
from vitlab.runs.state import (
    MAY_CHANGE_ON_RESUME,
    RunState,
    effective,
    hydra_quote,
    is_running,
    is_under,
    override_key,
)

Status = Literal["ok", "failed", "missing", "unfinished", "stale", "running"]
_UNSAFE = re.compile(r"[^A-Za-z0-9._+-]")


@dataclass(frozen=True)
class Job:
    """One `vitlab-train` run of a table: `overrides` are complete except where its files go."""

    id: str  # "<row>/<dataset>/seed<k>", with the grid point before the seed when the row has a grid
    row: str
    dataset: str | None
    seed: int
    overrides: tuple[str, ...]
    grid: tuple[tuple[str, str], ...] = ()
    produces: str | None = None  # prepare jobs: the file (relative to the table directory) they write
    extra: tuple[str, ...] = ()  # the command line's overrides for every run (the last of `overrides`)

    @property
    def table_overrides(self) -> tuple[str, ...]:
        """The overrides the table definition gives this job (without the command line's `extra`)."""
        return self.overrides[: len(self.overrides) - len(self.extra)]

    def is_stale(self, recorded: Sequence[str]) -> bool:
        """Whether a run made with `recorded` overrides is not this job any more: an override of the table is
        missing or changed, or one that the table no longer gives (and the command line does not) is there.
        Trainer and logging keys outside the table's own are not compared: another machine may set them."""
        recorded_set = set(effective(recorded))  # as the sweeper records them: 1.0e-2 -> 0.01, last key wins
        table = set(effective(self.table_overrides))
        if not table <= recorded_set:
            return True
        given = table | set(effective(self.extra))
        extra_keys = {override_key(o) for o in self.extra}
        return any(
            o not in given and override_key(o) not in extra_keys and not is_under(override_key(o), MAY_CHANGE_ON_RESUME)
            for o in recorded_set
        )

    def run_dir(self, table_dir: Path | str) -> Path:
        return Path(table_dir) / self.id

    def results_path(self, table_dir: Path | str) -> Path:
        return self.run_dir(table_dir) / RESULTS_FILE

    def launch_overrides(self, table_dir: Path | str) -> list[str]:
        """Overrides for a single `vitlab-train` run: this job's own, its run directory, and the table's
        weights folder (prepare jobs export there and rows load from there via `${paths.weights_dir}`)."""
        return [
            *self.overrides,
            f"hydra.run.dir={hydra_quote(self.run_dir(table_dir))}",
            f"paths.weights_dir={hydra_quote(Path(table_dir) / 'weights')}",
        ]


def grid_dir(point: Sequence[tuple[str, str]]) -> str:
    """A path-safe directory name for a grid point: optim.lr=3e-3 -> optim.lr_3e-3."""
    return "+".join(_UNSAFE.sub("-", f"{k}_{v}") for k, v in point)


def job_status(job: Job, table_dir: Path | str) -> Status:
    """ok / failed / missing / unfinished / stale (see the module docstring). A prepare job is ok exactly when
    the file it produces exists (a run that says ok but left no file counts as failed and runs again)."""
    if job.produces is not None and (Path(table_dir) / job.produces).exists():
        return "ok"
    run_dir = job.run_dir(table_dir)
    record = read_results(job.run_dir(table_dir))
    state = RunState.read(run_dir)
    recorded = record.get("overrides") if record else None
    if recorded is None and state is not None:
        recorded = state.overrides
    if state is not None and is_running(run_dir):
        return "running"  # another process trains it right now: neither launch it again nor move it
    if isinstance(recorded, list) and job.is_stale(recorded):
        return "stale"
    if record is None:
        return "unfinished" if state is not None else "missing"
    if record.get("status") == "interrupted" and state is not None:
        return "unfinished"
    return "ok" if record.get("status") == "ok" and job.produces is None else "failed"


def pending_jobs(jobs: Iterable[Job], table_dir: Path | str) -> tuple[list[Job], list[Job]]:
    """(to run, done): jobs whose results.json says ok are done; jobs another process is running are neither;
    all others run (again, or on)."""
    todo, done = [], []
    for job in jobs:
        status = job_status(job, table_dir)
        if status != "running":
            (done if status == "ok" else todo).append(job)
    return todo, done


def archive(job: Job, table_dir: Path | str) -> Path | None:
    """Move a failed or stale run's directory to `<run dir>.failed<N>` / `.stale<N>` so the job can run
    again from scratch; returns the new path (None when there was nothing to move: unfinished runs continue
    in place, ok runs are kept)."""
    run_dir = job.run_dir(table_dir)
    status = job_status(job, table_dir)
    if status not in ("failed", "stale") or not run_dir.is_dir():
        return None
    n = 1
    while run_dir.with_name(f"{run_dir.name}.{status}{n}").exists():
        n += 1
    return run_dir.rename(run_dir.with_name(f"{run_dir.name}.{status}{n}"))


def multirun_commands(jobs: Iterable[Job], table_dir: Path | str) -> list[list[str]]:
    """Group jobs that differ only in their seed into one `vitlab-train -m` argument list each, with
    `hydra.sweep.dir` at the group's directory and `hydra.sweep.subdir=seed${seed}`, so a multirun writes
    exactly the directories `Job.run_dir` names (checked in tests/test_reproduce_tables.py)."""
    groups: dict[tuple[str, tuple[str, ...]], list[Job]] = {}
    for job in jobs:
        if job.produces is not None:
            raise ValueError(f"{job.id}: prepare jobs run on their own (Job.launch_overrides), before the rows")
        common = tuple(o for o in job.overrides if o != f"seed={job.seed}")
        groups.setdefault((str(Path(job.id).parent), common), []).append(job)
    commands = []
    for (parent, common), members in groups.items():
        seeds = ",".join(str(j.seed) for j in members)
        sweep_dir = Path(table_dir) / parent
        commands.append(
            [
                *common,
                f"seed={seeds}",
                f"hydra.sweep.dir={hydra_quote(sweep_dir)}",
                "hydra.sweep.subdir=seed${seed}",
                f"paths.weights_dir={hydra_quote(Path(table_dir) / 'weights')}",
            ]
        )
    return commands


def prepare_command(job: Job, table_dir: Path | str) -> list[str]:
    """A prepare job as a one-job `vitlab-train -m` (so the configured Hydra launcher runs it too), writing
    exactly `Job.run_dir`: `<table dir>/_prepare/<name>`."""
    if job.produces is None:
        raise ValueError(f"{job.id} is not a prepare job")
    run_dir = job.run_dir(table_dir)
    return [
        *job.overrides,
        f"hydra.sweep.dir={hydra_quote(run_dir.parent)}",
        f"hydra.sweep.subdir={run_dir.name}",
        f"paths.weights_dir={hydra_quote(Path(table_dir) / 'weights')}",
    ]


def shell_line(args: Sequence[str], program: str = "vitlab-train -m") -> str:
    """A copy-pasteable command line for logs and READMEs."""
    return " ".join([program, *(shlex.quote(a) for a in args)])
