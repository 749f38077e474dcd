"""Where every job of a sweep stands, read from its run directories alone (docs/runs.md#watching-a-sweep).

A sweep is a folder of run directories: a Hydra multirun (`<sweep dir>/<job num>/`), an Optuna search (the
same layout) or a `vitlab-reproduce` table (`<row>/<data set>/seed<k>/`). A run directory is any folder holding
`results.json`, `run.json` or `.hydra/overrides.yaml`; nothing else is read, so a folder copied to another
machine gives the same table, and every name is relative to the folder given.

A job's state, in this order (docs/runs.md#watching-a-sweep):

* an attempt in `run.json` without an end that is alive -> `running`. Alive means: on the host that started it,
  its run directory's `.lock` is held (the lock every attempt holds, `vitlab.runs.state.RunLock`; the kernel
  drops it when the process dies, even on kill -9); elsewhere (another node, a copy), some file of the run was
  written within `stale_after` seconds (`metrics.csv` and `last.ckpt` every epoch, `train.log` as it logs).
* an attempt without an end that is not alive -> `stale` (killed, or lost with its node), unless results.json
  says ok.
* `results.json` says ok -> `done`; failed, interrupted, pruned -> the same; another word -> `failed`.
* a directory without `run.json` (the job is composing its config) -> `running` when written within
  `stale_after`, else `stale`.
* a job the sweep will run but whose directory does not exist yet -> `pending`: known for a table (its cells,
  given by the caller) and for a multirun whose job folders are numbered (Hydra's default `hydra.sweep.subdir`):
  its `multirun.yaml` gives the sweep's size (the product of the swept values, or an Optuna `n_trials`).

`retries` counts restarts after a crash: attempts that follow one which failed or never recorded its end, plus a
table's archived `<seed dir>.failed<n>` folders; a `retries` field in `results.json` is used as is where present.
"""

from __future__ import annotations

import contextlib
import csv
import math
import os
import re
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

from vitlab.errors import ConfigError
from vitlab.runs.files import RESULTS_FILE, read_json
from vitlab.runs.liveness import alive, last_write
from vitlab.runs.state import NOT_EXPERIMENT, RUN_FILE, canonical, is_under, override_key
from vitlab.runs.sweep_size import numbered_jobs

STATES = ("done", "running", "failed", "interrupted", "pruned", "stale", "pending")
FROM_RESULT = {"ok": "done", "failed": "failed", "interrupted": "interrupted", "pruned": "pruned"}
STALE_AFTER_S = 3600.0
# not part of what a job computes, or (hparams_search) what would start a search again instead of one run
HIDDEN = (*NOT_EXPERIMENT, "hparams_search")
_SKIP = {".hydra", "checkpoints", "csv", "wandb", ".submitit", "weights", "tensorboard"}
_ARCHIVED = re.compile(r"^(?P<name>.+)\.(?P<why>failed|stale)\d+$")


@dataclass
class JobStatus:
    """One row of the status table; `name` is the run directory relative to the sweep's folder."""

    name: str
    state: str
    epoch: int | None = None
    max_epochs: int | None = None
    best: float | None = None
    wall_s: float | None = None
    retries: int = 0
    slurm_id: str | None = None
    overrides: list[str] = field(default_factory=list)
    result: dict[str, Any] | None = None


@dataclass
class SweepStatus:
    """Every job of one sweep folder, and the metric its `best` column and summary rank by."""

    jobs: list[JobStatus]
    metric: str = "val/acc"
    mode: str = "max"

    def counts(self) -> dict[str, int]:
        return {s: n for s in STATES if (n := sum(1 for j in self.jobs if j.state == s))}

    def finished(self) -> bool:
        """Nothing is running or pending: `--watch` stops (a requeued job shows `interrupted` until it starts)."""
        return not any(j.state in ("running", "pending") for j in self.jobs)

    def best(self) -> JobStatus | None:
        """The finished ok job with the best `metric` in its results.json (first of equals); None when none."""
        scored = [(number((j.result or {}).get(self.metric)), j) for j in self.jobs if j.state == "done"]
        ranked = [(v, j) for v, j in scored if v is not None]
        if not ranked:
            return None
        pick = max if self.mode == "max" else min
        return pick(ranked, key=lambda vj: vj[0])[1]

    def summary(self) -> str:
        counts = ", ".join(f"{n} {s}" for s, n in self.counts().items())
        best = self.best()
        tail = (
            f"best {self.metric} {number((best.result or {}).get(self.metric)):.4g} (job {best.name})"
            if best is not None
            else f"no finished job with {self.metric} yet"
        )
        return f"{len(self.jobs)} jobs: {counts}; {tail}"

    def differing(self) -> dict[str, str]:
        """Per job, the overrides whose value is not the same in every job, abbreviated (`lr=0.003 seed=1`)."""
        maps = [dict((override_key(o), o) for o in j.overrides) for j in self.jobs]
        known = [m for m, j in zip(maps, self.jobs, strict=True) if j.state != "pending"]  # pending: none known
        keys = sorted({k for m in known for k in m if len({x.get(k) for x in known}) > 1})
        short = _short_keys(keys)
        return {
            j.name: " ".join(_abbreviated(short[k], m[k]) for k in keys if k in m)
            for j, m in zip(self.jobs, maps, strict=True)
        }


def number(value: Any) -> float | None:
    """A finite float, else None (results hold nulls for what a failed run did not measure)."""
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        return None
    return float(value)


def read_sweep(
    root: Path | str,
    metric: str = "val/acc",
    mode: str = "max",
    expected: Iterable[str] = (),
    stale_after: float = STALE_AFTER_S,
    now: float | None = None,
) -> SweepStatus:
    """Every job under `root` (a sweep, search or table folder); `expected` names jobs (relative paths) that
    will exist, e.g. a table's cells, so those without a directory are `pending`."""
    root = Path(root)
    if mode not in ("max", "min"):
        raise ConfigError(f"--mode {mode!r} is not a direction; allowed: max, min.")
    if not root.is_dir():
        raise ConfigError(f"{root} is not a directory; give a sweep folder (vitlab-train -m), a search or a table.")
    now = time.time() if now is None else now
    dirs, archived, sweeps = _walk(root)
    jobs = [read_job(root, d, metric, mode, stale_after, now, archived.get(d, 0)) for d in dirs]
    found = {j.name for j in jobs}
    wanted = set(expected) | {n for s in sweeps for n in numbered_jobs(root, s)}
    jobs += [JobStatus(name, "pending") for name in wanted - found]
    if not jobs:
        raise ConfigError(
            f"{root} holds no run directory (a folder with results.json, run.json or .hydra/overrides.yaml); give a "
            "sweep folder (vitlab-train -m: <sweep dir>), an Optuna search's or a vitlab-reproduce table's folder."
        )
    jobs.sort(key=lambda j: _natural(j.name))
    return SweepStatus(jobs, metric, mode)


def _walk(root: Path) -> tuple[list[Path], dict[Path, int], list[Path]]:
    """(run directories, retries per run directory from archived copies, folders holding a multirun.yaml)."""
    dirs: list[Path] = []
    archived: dict[Path, int] = {}
    sweeps: list[Path] = []
    for here, subdirs, files in os.walk(root):
        path = Path(here)
        if RESULTS_FILE in files or RUN_FILE in files or (path / ".hydra" / "overrides.yaml").is_file():
            dirs.append(path)
            subdirs[:] = []
            continue
        if "multirun.yaml" in files:
            sweeps.append(path)
        for name in list(subdirs):
            match = _ARCHIVED.match(name)
            if match:  # a table's earlier try of this job, moved aside (vitlab.reproduce.jobs.archive)
                if match["why"] == "failed":
                    archived[path / match["name"]] = archived.get(path / match["name"], 0) + 1
                subdirs.remove(name)
            elif name in _SKIP:
                subdirs.remove(name)
    return dirs, archived, sweeps


def read_job(
    root: Path, run_dir: Path, metric: str, mode: str, stale_after: float, now: float, archived: int = 0
) -> JobStatus:
    """One run directory's row (see the module docstring for how its state is decided)."""
    result = read_json(run_dir / RESULTS_FILE) if (run_dir / RESULTS_FILE).exists() else None
    run = read_json(run_dir / RUN_FILE) or {}
    attempts = [a for a in run.get("attempts") or [] if isinstance(a, dict)]
    last = attempts[-1] if attempts else None
    written = last_write(run_dir)
    open_attempt = last is not None and not last.get("ended")
    if open_attempt and alive(run_dir, last, written, stale_after, now):  # type: ignore[arg-type]
        state = "running"
    elif open_attempt and (result or {}).get("status") != "ok":  # its process died without recording an end
        state = "stale"
    elif result is not None:
        state = FROM_RESULT.get(str(result.get("status")), "failed")
    elif not attempts and now - written < stale_after:
        state = "running"
    else:
        state = "stale"
    epochs, best = _csv_progress(run_dir, metric, mode)
    if state == "done" and number(result.get("epochs")) is not None:  # type: ignore[union-attr]
        epochs = int(result["epochs"])  # type: ignore[index]
    recorded = number((result or {}).get(metric))
    if recorded is not None and state != "running":
        best = recorded
    return JobStatus(
        name=run_dir.relative_to(root).as_posix(),
        state=state,
        epoch=epochs,
        max_epochs=_max_epochs(run_dir),
        best=best,
        wall_s=_wall(result, attempts, written, now, state == "running"),
        retries=_retries(result, attempts) + archived,
        slurm_id=next((str(a["slurm_job_id"]) for a in reversed(attempts) if a.get("slurm_job_id")), None),
        overrides=job_overrides(run_dir, run, result),
        result=result,
    )


def _csv_progress(run_dir: Path, metric: str, mode: str) -> tuple[int | None, float | None]:
    """(epochs validated, best `metric`) from the CSV log (`logger=csv`, the default): rows holding the metric."""
    paths = sorted(run_dir.glob("csv/metrics.csv")) or sorted(run_dir.glob("csv/version_*/metrics.csv"))
    if not paths:
        return None, None
    epochs: set[str] = set()
    values: list[float] = []
    try:
        with open(paths[-1], newline="") as handle:
            for row in csv.DictReader(handle):
                with contextlib.suppress(TypeError, ValueError):
                    if row.get(metric):
                        values.append(float(row[metric]))
                        epochs.add(row.get("epoch") or "")
    except OSError:
        return None, None
    values = [v for v in values if math.isfinite(v)]
    return len(epochs) or None, ((max if mode == "max" else min)(values) if values else None)


def _max_epochs(run_dir: Path) -> int | None:
    """`trainer.max_epochs` of the resolved config (a line scan: the file is written by OmegaConf's to_yaml)."""
    try:
        text = (run_dir / "config_resolved.yaml").read_text()
    except OSError:
        return None
    block = re.search(r"^trainer:\n((?:[ \t]+.*\n|\n)*)", text, re.M)
    found = re.search(r"^  max_epochs: (-?\d+)\s*$", block.group(1), re.M) if block else None
    return int(found.group(1)) if found and int(found.group(1)) >= 0 else None


def _stamp(text: Any) -> float | None:
    try:
        return datetime.strptime(str(text), "%Y-%m-%dT%H:%M:%S%z").timestamp()
    except ValueError:
        return None


def _wall(
    result: dict[str, Any] | None, attempts: Sequence[dict[str, Any]], written: float, now: float, running: bool
) -> float | None:
    """Seconds over all attempts: results.json's `wall_s` (unless a later attempt runs), else the ended
    attempts' and the open one's so far (to now when it runs, to its last write when it is stale)."""
    if result is not None and not running and number(result.get("wall_s")) is not None:
        return float(result["wall_s"])
    if not attempts:
        return None
    total = sum(number(a.get("wall_s")) or 0.0 for a in attempts if a.get("ended"))
    last = attempts[-1]
    started = _stamp(last.get("started"))
    if not last.get("ended") and started is not None:
        total += max(0.0, (now if running else written) - started)
    return round(total, 1)


def _retries(result: dict[str, Any] | None, attempts: Sequence[dict[str, Any]]) -> int:
    if result is not None and isinstance(result.get("retries"), int):
        return int(result["retries"])
    return sum(1 for before in attempts[:-1] if not before.get("ended") or before.get("status") == "failed")


def job_overrides(run_dir: Path, run: dict[str, Any], result: dict[str, Any] | None) -> list[str]:
    """The job's overrides as given (`.hydra/overrides.yaml`, else run.json's, else results.json's), less the
    ones that do not change what it computes (`vitlab.runs.state.NOT_EXPERIMENT`, `hparams_search`)."""
    given: Any = None
    with contextlib.suppress(OSError):
        import yaml

        given = yaml.safe_load((run_dir / ".hydra" / "overrides.yaml").read_text())
    if not isinstance(given, list):
        given = run.get("overrides") or (result or {}).get("overrides") or []
    last = {override_key(str(o)): str(o) for o in given}
    return [o for k, o in last.items() if not is_under(k, HIDDEN)]


def best_command(status: SweepStatus) -> list[str]:
    """`vitlab-train` and the best finished job's overrides; a `ConfigError` when no job finished ok."""
    best = status.best()
    if best is None:
        done = sum(1 for j in status.jobs if j.state == "done")
        raise ConfigError(
            f"no finished job has a {status.metric} to rank by ({len(status.jobs)} jobs, {done} done with status ok); "
            "--metric takes a key of a finished run's results.json (val/acc, test/acc, ...) and --mode max or min."
        )
    return ["vitlab-train", *best.overrides]


def _short_keys(keys: Sequence[str]) -> dict[str, str]:
    """`optim.lr` -> `lr=` where its last part names one key only; group choices keep their path."""
    tails = [re.split(r"[./]", k)[-1] for k in keys]
    return {k: (t if tails.count(t) == 1 else k) for k, t in zip(keys, tails, strict=True)}


def _abbreviated(key: str, override: str) -> str:
    """`lr=0.003`, `~stem` (a deletion); values past 24 characters end in `…`."""
    if override.startswith("~"):
        return "~" + key
    value = canonical(override).split("=", 1)[1] if "=" in override else ""
    return f"{key}=" + (value if len(value) <= 24 else value[:23] + "…")


def _natural(name: str) -> list[Any]:
    return [(0, int(p), "") if p.isdigit() else (1, 0, p) for p in re.split(r"(\d+)", name)]
