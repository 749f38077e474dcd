"""A run directory's identity and history: `run.json`.

One experiment is one directory, whatever happens to the processes running it. `run.json` is written when a
run starts and updated by every later attempt in the same directory (a preempted job requeued, `resume=`,
`vitlab-reproduce` re-launching an unfinished row). It holds the overrides that define the experiment, the
W&B run id every attempt logs to, and one entry per attempt: when and where it ran, the checkpoint it
continued from, how it ended. `results.json` stays the run's one result, written when an attempt ends.
"""

from __future__ import annotations

import os
import re
import secrets
import socket
import time
from dataclasses import asdict, dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Any

from vitlab.runs.files import read_json, write_json
from vitlab.runs.slurm_env import slurm_job_id

# what Hydra's override grammar accepts in an unquoted value (anything else is quoted)
_HYDRA_PLAIN = re.compile(r"[A-Za-z0-9_/.+\-%*@?|]+")
RUN_FILE = "run.json"
LAST_CHECKPOINT = Path("checkpoints") / "last.ckpt"

# overrides that say where and how a run executes or logs, not what it computes
NOT_EXPERIMENT = (
    "logger",
    "hydra",
    "paths",
    "tags",
    "sweep",  # sweep.retries: how often a crashed run is tried again, not what it computes
    "resume",  # resume.fallback: which checkpoint to continue from, not what is computed
    "overwrite",  # what happens to a directory's old contents
    "data.num_workers",
    "data.pin_memory",
    "data.prefetch_factor",
    "data.verify",  # packed sets: how often shard checksums are computed, not which data are read
    "data.cache_dir",  # packed sets at a URL: where their shards are copied
    "callbacks.last_checkpoint",
    "trainer.enable_progress_bar",
    "trainer.log_every_n_steps",
)
# what a continued run may add or change: the above, and where and how long the trainer runs. Keys that
# change what is computed (precision, accumulation, clipping, limits) are not among them. The trainer group
# itself (trainer=gpu) may change, to move a run to other hardware: its precision then changes with it.
MAY_CHANGE_ON_RESUME = (
    *NOT_EXPERIMENT,
    "trainer.devices",
    "trainer.num_nodes",
    "trainer.accelerator",
    "trainer.strategy",
    "trainer.max_epochs",
    "trainer.enable_model_summary",
    "trainer=",  # the group selection itself (trainer=ddp); a trailing "=" matches the key exactly
)


def override_key(override: str) -> str:
    """`+a.b=1` -> `a.b`; `~model/stem` -> `model/stem`; `trainer=ddp` -> `trainer`."""
    return override.lstrip("+~").split("=", 1)[0].strip()


def is_under(key: str, prefixes: tuple[str, ...]) -> bool:
    """`key` is one of `prefixes` or below one (`a.b` under `a`); a prefix ending in `=` matches exactly."""
    return any(key == p[:-1] if p.endswith("=") else (key == p or key.startswith((p + ".", p + "/"))) for p in prefixes)


@lru_cache(maxsize=4096)
def canonical(override: str) -> str:
    """An override as Hydra's sweeper records it (`optim.lr=1.0e-2` -> `optim.lr=0.01`, `true` -> `True`,
    `~model/stem=null` -> `~model/stem`), so overrides typed differently compare equal."""
    from hydra.core.override_parser.overrides_parser import OverridesParser

    try:
        parsed = OverridesParser.create().parse_override(override)
    except Exception:  # not Hydra syntax: compare it as written
        return override
    if parsed.is_delete():
        return parsed.get_key_element()
    return f"{parsed.get_key_element()}={parsed.get_value_element_as_str()}"


def effective(overrides: list[str] | tuple[str, ...]) -> list[str]:
    """The overrides that take effect, canonical: of several for one key the last wins (as in Hydra)."""
    last = {override_key(o): canonical(o) for o in overrides}
    return list(last.values())


def experiment_overrides(overrides: list[str] | tuple[str, ...], ignore: tuple[str, ...] = NOT_EXPERIMENT) -> list[str]:
    """The overrides that define the experiment, canonical and sorted (their order never changes what Hydra
    composes here)."""
    return sorted(o for o in effective(overrides) if not is_under(override_key(o), ignore))


def same_experiment(a: list[str] | tuple[str, ...], b: list[str] | tuple[str, ...], ignore: tuple[str, ...]) -> bool:
    return experiment_overrides(a, ignore) == experiment_overrides(b, ignore)


def hydra_quote(path: Path | str) -> str:
    """A path as a Hydra override value: as is when plain, else single-quoted. In a quoted value Hydra reads a
    backslash as an escape only before a quote, so quotes and trailing backslashes are escaped."""
    text = str(path)
    if _HYDRA_PLAIN.fullmatch(text):
        return text
    body = text.rstrip("\\")
    return "'" + body.replace("'", "\\'") + "\\" * 2 * (len(text) - len(body)) + "'"


def last_checkpoint(run_dir: Path) -> Path | None:
    path = run_dir / LAST_CHECKPOINT
    return path if path.is_file() else None


def checkpoint_position(path: Path) -> dict[str, int]:
    """{epoch, global_step} of a Lightning checkpoint, read without loading its tensors (memory-mapped)."""
    import torch

    ckpt = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    return {"epoch": int(ckpt.get("epoch", 0)), "global_step": int(ckpt.get("global_step", 0))}


def now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S%z")


@dataclass
class RunState:
    """The contents of `run.json` (see the module docstring)."""

    overrides: list[str]
    wandb_id: str = field(default_factory=lambda: secrets.token_hex(4))
    created: str = field(default_factory=now)
    attempts: list[dict[str, Any]] = field(default_factory=list)
    # the run's own micro-batch split after out-of-memory retries (docs/runs.md#retries): every attempt loads
    # data.batch_size / batch_split images per micro-batch and accumulates batch_split times as many, so the
    # images per optimiser step stay those of its overrides. Not an override: a user's change is still refused.
    batch_split: int = 1

    @classmethod
    def read(cls, run_dir: Path) -> RunState | None:
        data = read_json(run_dir / RUN_FILE)
        if data is None or not isinstance(data.get("overrides"), list):
            return None
        return cls(
            overrides=[str(o) for o in data["overrides"]],
            wandb_id=str(data.get("wandb_id") or secrets.token_hex(4)),
            created=str(data.get("created", "")),
            attempts=list(data.get("attempts") or []),
            batch_split=int(data.get("batch_split") or 1),  # run.json from before retries: 1
        )

    def write(self, run_dir: Path) -> None:
        run_dir.mkdir(parents=True, exist_ok=True)
        write_json(run_dir / RUN_FILE, asdict(self))

    @property
    def resumed(self) -> int:
        """How many attempts continued from a checkpoint of this run."""
        return sum(1 for a in self.attempts if a.get("resumed_from"))

    @property
    def retries(self) -> int:
        """How many attempts ended in a failure that was tried again (`retried`: oom or crash)."""
        return sum(1 for a in self.attempts if a.get("retried"))

    @property
    def wall_s(self) -> float:
        """Seconds spent by the finished attempts (the current one not included)."""
        return round(sum(float(a.get("wall_s") or 0.0) for a in self.attempts), 2)

    def begin(self, resumed_from: dict[str, Any] | None, overrides: list[str] | None = None) -> None:
        """A new attempt: where and when it runs, what it continues from, its own overrides and code."""
        from vitlab.provenance import git_state

        self.attempts.append(
            {
                "started": now(),
                "host": socket.gethostname(),
                "pid": os.getpid(),
                "slurm_job_id": slurm_job_id(),
                "slurm_restart": os.environ.get("SLURM_RESTART_COUNT", "0") if slurm_job_id() else None,
                "resumed_from": resumed_from,
                "overrides": list(overrides if overrides is not None else self.overrides),
                **git_state(),
            }
        )

    def record_data(self, fingerprint: dict[str, Any]) -> None:
        """The data this attempt reads (`ImageDataModule.fingerprint()`: sha256, samples, basis; docs/runs.md)."""
        if self.attempts:
            self.attempts[-1]["data"] = dict(fingerprint)

    def data_fingerprint(self) -> dict[str, Any] | None:
        """The data the latest attempt that recorded one read; None for runs from before data fingerprints."""
        for attempt in reversed(self.attempts):
            data = attempt.get("data")
            if isinstance(data, dict) and data.get("sha256"):
                return data
        return None

    def retry(self, reason: str, halve: bool) -> None:
        """The latest attempt failed and is tried again (`reason`: oom or crash); with `halve`, every later attempt
        loads half the micro-batch and accumulates twice as many (docs/runs.md#retries). An attempt that never
        recorded its end (the process was killed) ends here as `killed`."""
        if self.attempts:
            latest = self.attempts[-1]
            latest.setdefault("ended", now())
            latest.setdefault("status", "killed")
            latest["retried"] = reason
        if halve:
            self.batch_split *= 2

    def end(self, status: str, wall_s: float, **details: Any) -> None:
        if self.attempts:
            self.attempts[-1].update(ended=now(), status=status, wall_s=wall_s, **details)


class RunLock:
    """An exclusive lock on a run directory (`.lock`, flock) held by the attempt that runs in it, so a second
    process (resume=auto, a re-launched table, a duplicate requeue) never trains into a live run."""

    def __init__(self, run_dir: Path) -> None:
        self.path = run_dir / ".lock"
        self._handle: Any = None

    def acquire(self) -> bool:
        import fcntl

        self.path.parent.mkdir(parents=True, exist_ok=True)
        handle = open(self.path, "a")  # noqa: SIM115  (held until release)
        try:
            fcntl.flock(handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            handle.close()
            return False
        self._handle = handle
        return True

    def release(self) -> None:
        if self._handle is not None:
            self._handle.close()  # closing the file releases the lock
            self._handle = None


def is_running(run_dir: Path) -> bool:
    """Whether some process holds the run directory's lock right now."""
    if not (run_dir / ".lock").exists():
        return False
    lock = RunLock(run_dir)
    if lock.acquire():
        lock.release()
        return False
    return True


def task_overrides() -> list[str]:
    """The overrides of the running Hydra job as Hydra recorded them ([] outside a Hydra job)."""
    from hydra.core.hydra_config import HydraConfig

    return list(HydraConfig.get().overrides.task) if HydraConfig.initialized() else []
