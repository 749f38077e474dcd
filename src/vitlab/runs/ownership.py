"""Whose a run directory is: vitlab may write only into an empty one, its own run, or one it was told to clear.

A directory is *vitlab's* when it does not exist, is empty, holds only what Hydra writes when any job starts
(`.hydra/`, `<task>.log`, vitlab's `.lock`: a run that stopped before its first file), or holds a readable
`run.json` (a vitlab run; whether it is the same experiment is checked beside this, in `vitlab.cli`).
Anything else — another tool's run, a vitlab run whose `run.json` cannot be read, a `vitlab-eval` directory —
is refused before a byte is written, or, with `overwrite=true`, moved aside whole to
`<dir>.replaced-<timestamp>/` next to it: nothing is deleted.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

from vitlab.runs.state import RUN_FILE, RunState

START_FILES = (".hydra", ".lock")  # and *.log: Hydra's job log, appended to, never replaced
MULTIRUN_FILE = "multirun.yaml"
# a process's rank as Lightning and its launchers set it; NODE_RANK/GROUP_RANK: a node > 0 of a multi-node
# launch, started by hand before Lightning sets RANK (its local rank 0 is not the run's rank 0)
RANK_VARIABLES = ("RANK", "LOCAL_RANK", "SLURM_PROCID", "JSM_NAMESPACE_RANK", "NODE_RANK", "GROUP_RANK")


def is_start_file(name: str) -> bool:
    return name in START_FILES or name.endswith(".log")


def contents(run_dir: Path) -> list[str]:
    """The names in `run_dir` other than Hydra's start files, sorted (directories with a trailing `/`)."""
    if not run_dir.is_dir():
        return []
    return sorted(p.name + ("/" if p.is_dir() else "") for p in run_dir.iterdir() if not is_start_file(p.name))


def listed(names: list[str], most: int = 5) -> str:
    """`a, b, c and 4 more`: what is there, short enough for one paragraph."""
    shown = ", ".join(names[:most])
    return shown + (f" and {len(names) - most} more" if len(names) > most else "")


def foreign_contents(run_dir: Path, task: str = "train") -> str | None:
    """What makes `run_dir` not vitlab's to write into (for `task`), or None when it may be written.

    A training run continues its own directory (a readable run.json); `vitlab-eval` never continues one, so any
    file beyond Hydra's start files makes a directory not its own."""
    names = contents(run_dir)
    if not names:
        return None
    if task == "train":
        if RunState.read(run_dir) is not None:
            return None
        why = (
            f"its {RUN_FILE} cannot be read"
            if (run_dir / RUN_FILE).exists()
            else f"no {RUN_FILE}: it is not a vitlab training run (another tool's, or a vitlab-eval directory)"
        )
    else:
        why = f"vitlab-{task} writes only into an empty directory"
    return f"holds {listed(names)} ({why})"


def foreign_sweep(sweep_dir: Path, marker: str) -> str | None:
    """What makes a sweep directory not vitlab's: a `multirun.yaml` that vitlab did not write (Hydra replaces
    it when the sweep starts), i.e. one without `marker` (the dotted name of a Hydra callback that every
    vitlab config registers). Its job folders are checked one by one when each job starts."""
    path = sweep_dir / MULTIRUN_FILE
    if not path.exists():
        return None
    try:
        if marker in path.read_text(errors="replace"):
            return None
    except OSError:
        pass
    beside = listed([n for n in contents(sweep_dir) if n != MULTIRUN_FILE]) or "nothing else"
    return f"holds a {MULTIRUN_FILE} that vitlab did not write (another tool's sweep), beside {beside}"


def ways_out(key: str, run_dir: Path, task: str = "train") -> str:
    """The three ways on from a refused directory, as one sentence."""
    resume = (
        f"to continue a vitlab run there, restore its run.json and use `vitlab-train resume={run_dir}`; "
        if task == "train"
        else ""
    )
    return (
        f"Nothing was written. Choose another {key} (or leave it unset for a new dated one); {resume}"
        f"or add overwrite=true to move its contents aside to {run_dir.name}.replaced-<time>/ next to it "
        "(nothing is deleted) and start there."
    )


def move_aside(run_dir: Path, keep_start_files: bool = False) -> Path:
    """Move everything in `run_dir` to a new sibling `<name>.replaced-<time>[-n]/` and return it; with
    `keep_start_files`, Hydra's start files stay (a sweep job's `.hydra/`, written for this job already).

    The names are renamed one by one inside one file system, so each move is atomic and nothing is copied."""
    stamp = time.strftime("%Y%m%d-%H%M%S")
    target = run_dir.with_name(f"{run_dir.name}.replaced-{stamp}")
    n = 1
    while target.exists():  # two overwrites within one second
        n += 1
        target = run_dir.with_name(f"{run_dir.name}.replaced-{stamp}-{n}")
    target.mkdir(parents=True)
    for entry in sorted(run_dir.iterdir()):
        if not (keep_start_files and is_start_file(entry.name)):
            os.replace(entry, target / entry.name)
    return target


def is_rank_zero() -> bool:
    """Whether this process is rank 0 (or alone), from the environment: none of the rank variables says
    otherwise. Ranks > 0 join the directory rank 0 decided on and never move anything."""
    for variable in RANK_VARIABLES:
        value = os.environ.get(variable, "0").strip()
        if value.isdigit() and int(value) != 0:
            return False
    return True
