"""Validate a prepared VTAB-1k folder before spending GPU hours on it (`scripts/check_vtab.py` prints this).

Per task: the folder and its four list files exist and parse; train800/val200/train800val200 have
800/200/1000 lines (skippable for miniature copies); train800 + val200 is exactly train800val200; every
listed image exists (and, optionally, opens); labels stay below the task's known class count.
"""

from __future__ import annotations

import hashlib
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from PIL import Image

from vitlab.data.vtab_tasks import EXPECTED_LINES, LIST_FILES, NUM_CLASSES, TASKS, describe_tasks, read_list
from vitlab.errors import ConfigError

Entries = list[tuple[str, int]]


@dataclass
class TaskCheck:
    """The outcome for one task: line counts per list file, classes seen, and every problem found."""

    task: str
    counts: dict[str, int] = field(default_factory=dict)
    num_labels: int | None = None
    problems: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems


def _digest(path: Path) -> str:
    return hashlib.sha1(path.read_bytes()).hexdigest()


def _union_problem(task_dir: Path, lists: dict[str, Entries]) -> str | None:
    """train800 + val200 must equal train800val200 as a multiset of (image, label). Compared by path first;
    if the paths differ (a layout storing each split's images separately), by file content."""
    parts = lists["train800.txt"] + lists["val200.txt"]
    joint = lists["train800val200.txt"]
    if Counter(parts) == Counter(joint):
        return None
    try:
        by_content = Counter((_digest(task_dir / p), y) for p, y in parts)
        if by_content == Counter((_digest(task_dir / p), y) for p, y in joint):
            return None
    except OSError:
        pass  # a missing image is reported on its own
    only_joint = sorted((Counter(joint) - Counter(parts)).elements())
    only_parts = sorted((Counter(parts) - Counter(joint)).elements())
    example = (only_joint or only_parts)[0]
    return (
        f"train800 + val200 != train800val200 ({len(only_joint)} entries only in train800val200, "
        f"{len(only_parts)} only in train800/val200; e.g. {example[0]} {example[1]})"
    )


def _image_problems(task_dir: Path, lists: dict[str, Entries], open_images: bool) -> list[str]:
    problems = []
    paths = sorted({p for entries in lists.values() for p, _ in entries})
    missing = [p for p in paths if not (task_dir / p).is_file()]
    if missing:
        problems.append(f"{len(missing)} listed images missing (first: {missing[0]})")
    if open_images:
        broken = []
        for p in sorted(set(paths) - set(missing)):
            try:
                with Image.open(task_dir / p) as img:
                    img.convert("RGB")
            except (OSError, ValueError):
                broken.append(p)
        if broken:
            problems.append(f"{len(broken)} images do not open (first: {broken[0]})")
    return problems


def check_task(root: Path, task: str, expected_counts: bool = True, open_images: bool = False) -> TaskCheck:
    """Check one task folder; never raises for problems with the data, it lists them."""
    result = TaskCheck(task)
    if task not in NUM_CLASSES:
        result.problems.append(f"unknown task; allowed: {describe_tasks()}")
        return result
    task_dir = Path(root) / task
    if not task_dir.is_dir():
        result.problems.append(f"folder {task_dir} missing")
        return result
    lists: dict[str, Entries] = {}
    for name in LIST_FILES:
        if not (task_dir / name).is_file():
            result.problems.append(f"{name} missing")
            continue
        try:
            lists[name] = read_list(task_dir / name)
        except ConfigError as exc:
            result.problems.append(str(exc))
            continue
        result.counts[name] = len(lists[name])
        want = EXPECTED_LINES.get(name)
        if expected_counts and want is not None and len(lists[name]) != want:
            result.problems.append(f"{name} has {len(lists[name])} lines, expected {want}")
        if not lists[name]:
            result.problems.append(f"{name} is empty")
    if all(name in lists for name in EXPECTED_LINES):
        problem = _union_problem(task_dir, lists)
        if problem:
            result.problems.append(problem)
    labels = [y for entries in lists.values() for _, y in entries]
    if labels:
        result.num_labels = max(labels) + 1
        known = NUM_CLASSES[task]
        if result.num_labels > known:
            bad = sorted({y for y in labels if y >= known})
            result.problems.append(f"labels {bad[:5]} out of range: {task} has {known} classes (0..{known - 1})")
    result.problems += _image_problems(task_dir, lists, open_images)
    return result


def check_root(
    root: Path, tasks: Iterable[str] | None = None, expected_counts: bool = True, open_images: bool = False
) -> list[TaskCheck]:
    """Check the given tasks (default: all 19) under `root`."""
    return [check_task(Path(root), t, expected_counts, open_images) for t in (tasks or TASKS)]


def format_checks(checks: Sequence[TaskCheck]) -> str:
    """A plain-text table: one row per task with line counts, classes and ✓ or ✗ with the reasons."""
    header = ["task", *(n.removesuffix(".txt") for n in LIST_FILES), "classes", "ok"]
    rows = []
    for c in checks:
        known = NUM_CLASSES.get(c.task)
        classes = f"{c.num_labels if c.num_labels is not None else '-'}/{known if known else '?'}"
        counts = [str(c.counts.get(n, "-")) for n in LIST_FILES]
        rows.append([c.task, *counts, classes, "✓" if c.ok else "✗ " + "; ".join(c.problems)])
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header) - 1)]
    lines = []
    for row in [header, *rows]:
        lines.append("  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=False)) + "  " + row[-1])
    failed = sum(not c.ok for c in checks)
    lines.append(f"{len(checks) - failed}/{len(checks)} tasks ok" + (f", {failed} failed" if failed else ""))
    return "\n".join(lines)
