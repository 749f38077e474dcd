"""Which checkpoint a run continues from when its `last.ckpt` cannot be read: the newest readable one.

vitlab writes `last.ckpt` atomically, but a copy, a failing disk, or a file system without atomic renames
can still leave a damaged one. Then the run's other checkpoints (`checkpoints/*.ckpt`, e.g. the best
`epoch_NNN.ckpt`) are ordered by the training position stored in them — global step, then epoch, then
modification time — and the newest that opens as a checkpoint is offered by name, or taken with
`resume.fallback=true`. Positions are read memory-mapped, so looking costs no tensor reads.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from vitlab.errors import unreadable_file_reason
from vitlab.runs.state import LAST_CHECKPOINT


@dataclass(frozen=True)
class CheckpointInfo:
    """A checkpoint that opens, and where in training it was written."""

    path: Path
    epoch: int
    global_step: int
    mtime: float

    def describe(self) -> str:
        return f"{self.path.name} (epoch {self.epoch}, step {self.global_step})"


@dataclass(frozen=True)
class Damage:
    """A checkpoint that cannot be read, why, and the readable ones beside it (newest first)."""

    path: Path
    reason: str
    alternatives: list[CheckpointInfo]

    @property
    def newest(self) -> CheckpointInfo | None:
        return self.alternatives[0] if self.alternatives else None


def inspect(path: Path) -> CheckpointInfo | str:
    """The checkpoint's position when it opens as a Lightning checkpoint, else why not (one line)."""
    import torch

    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except Exception as exc:  # truncated, corrupt, pickled code, not a torch file
        return unreadable_file_reason(exc).split(". ", 1)[0].rstrip(".")  # torch's first sentence says what
    if not isinstance(ckpt, dict) or "state_dict" not in ckpt:
        return "not a Lightning checkpoint (no 'state_dict')"
    try:
        epoch, step = int(ckpt.get("epoch", 0)), int(ckpt.get("global_step", 0))
    except (TypeError, ValueError):
        return "its epoch or global_step is not a number"
    return CheckpointInfo(path, epoch, step, path.stat().st_mtime)


def readable_checkpoints(folder: Path, skip: Path | None = None) -> list[CheckpointInfo]:
    """The checkpoints in `folder` that open (all but `skip`), newest training position first."""
    found = []
    for path in sorted(folder.glob("*.ckpt")) if folder.is_dir() else []:
        if skip is not None and path.resolve() == skip.resolve():
            continue
        info = inspect(path)
        if isinstance(info, CheckpointInfo):
            found.append(info)
    return sorted(found, key=lambda c: (c.global_step, c.epoch, c.mtime), reverse=True)


def damage_of(path: Path) -> Damage | None:
    """None when `path` is absent or opens as a checkpoint; otherwise what is wrong and what else is there."""
    if not path.is_file():
        return None
    info = inspect(path)
    if isinstance(info, CheckpointInfo):
        return None
    return Damage(path, info, readable_checkpoints(path.parent, skip=path))


def damaged_last(run_dir: Path) -> Damage | None:
    """The run's `checkpoints/last.ckpt`, when it exists and cannot be read."""
    return damage_of(run_dir / LAST_CHECKPOINT)


def continue_refusal(damage: Damage, given: str, run_dir: Path) -> str:
    """One paragraph: `given` (e.g. `resume=<dir>`) cannot continue from a damaged last.ckpt; what can."""
    command = f"`vitlab-train resume={run_dir} resume.fallback=true`"
    if damage.newest is not None:
        offer = (
            f"The newest readable checkpoint of the run is checkpoints/{damage.newest.describe()}; continue from it "
            f"with {command} (the steps after it are trained again; the damaged last.ckpt is replaced by the next "
            "checkpoint)."
        )
    else:
        offer = (
            f"No other checkpoint of the run can be read: start it again from its first step in its directory with "
            f"{command}, or start a new run (another hydra.run.dir)."
        )
    return (
        f"{given}: the run's checkpoints/last.ckpt cannot be read ({damage.reason}), so the run cannot continue "
        f"from it. Nothing was written. {offer}"
    )


def fallback_line(damage: Damage) -> str:
    """The one log line of `resume.fallback=true`: what is taken instead of the damaged last.ckpt."""
    taken = (
        f"continuing from {damage.newest.describe()}" if damage.newest else "no readable one, starting again at step 0"
    )
    return f"resume.fallback=true: {damage.path} cannot be read ({damage.reason}); {taken}"


def alternatives_sentence(damage: Damage) -> str:
    """For a damaged `ckpt_path=`: the readable checkpoints in the same folder, or '' when there are none."""
    if not damage.alternatives:
        return ""
    names = ", ".join(c.describe() for c in damage.alternatives[:4])
    folder = damage.path.parent
    return f" Readable checkpoints in the same folder, newest first: {names}; give one as ckpt_path={folder}/<name>."
