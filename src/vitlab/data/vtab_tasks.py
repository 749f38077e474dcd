"""VTAB-1k as a benchmark: the 19 tasks, their groups and class counts, the list-file format of the standard
processed layout, published reference rows, and the two averaging conventions.

Kept free of torch so the folder checker (`scripts/check_vtab.py`) and result tables start instantly.
Sources: docs/papers/ode.md, sections "VTAB-1k protocol" (task list and class counts, from FacT's `vtab.py`)
and "VTAB-1k reference numbers" (reference numbers, from the V-PETL Bench README).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from vitlab.errors import ConfigError

# folder names of the standard processed layout (NOAH / FacT), in the conventional table order
NATURAL = ("cifar", "caltech101", "dtd", "oxford_flowers102", "oxford_iiit_pet", "svhn", "sun397")
SPECIALIZED = ("patch_camelyon", "eurosat", "resisc45", "diabetic_retinopathy")
STRUCTURED = (
    "clevr_count",
    "clevr_dist",
    "dmlab",
    "kitti",
    "dsprites_loc",
    "dsprites_ori",
    "smallnorb_azi",
    "smallnorb_ele",
)
GROUPS: dict[str, tuple[str, ...]] = {"natural": NATURAL, "specialized": SPECIALIZED, "structured": STRUCTURED}
TASKS: tuple[str, ...] = NATURAL + SPECIALIZED + STRUCTURED

NUM_CLASSES: dict[str, int] = {
    "cifar": 100,
    "caltech101": 102,
    "dtd": 47,
    "oxford_flowers102": 102,
    "oxford_iiit_pet": 37,
    "svhn": 10,
    "sun397": 397,
    "patch_camelyon": 2,
    "eurosat": 10,
    "resisc45": 45,
    "diabetic_retinopathy": 5,
    "clevr_count": 8,
    "clevr_dist": 6,
    "dmlab": 6,
    "kitti": 4,
    "dsprites_loc": 16,
    "dsprites_ori": 16,
    "smallnorb_azi": 18,
    "smallnorb_ele": 9,
}

# The four list files of every task folder; the first three have these many lines in the real data.
LIST_FILES = ("train800.txt", "val200.txt", "train800val200.txt", "test.txt")
EXPECTED_LINES = {"train800.txt": 800, "val200.txt": 200, "train800val200.txt": 1000}
LAYOUT = (
    "<root>/<task>/{train800,val200,train800val200,test}.txt with lines '<image path> <label>' (paths relative "
    "to <root>/<task>/, e.g. images/...)"
)


def describe_tasks() -> str:
    """The 19 task names by group, for error messages."""
    return "; ".join(f"{group}: {', '.join(tasks)}" for group, tasks in GROUPS.items())


def read_list(path: Path) -> list[tuple[str, int]]:
    """Parse one list file into (relative image path, label) pairs; blank lines are skipped.

    The label is the last whitespace-separated field, so a path with spaces still parses.
    """
    entries = []
    for number, line in enumerate(path.read_text().splitlines(), start=1):
        if not line.strip():
            continue
        parts = line.strip().rsplit(maxsplit=1)
        if len(parts) != 2 or not parts[1].isdigit():
            raise ConfigError(
                f"{path} line {number}: {line.strip()!r} is not '<image path> <integer label>'. VTAB-1k list "
                f"files hold one image per line: its path relative to the task folder, a space and a label >= 0."
            )
        entries.append((parts[0], int(parts[1])))
    return entries


def vtab_means(acc: Mapping[str, float], partial: bool = False) -> dict[str, float]:
    """Per-group means, `group_mean` (mean of the three group means: VPT, NOAH, FacT, SSF tables) and
    `flat_mean` (mean over the tasks: the V-PETL Bench "Mean"); both are reported because they differ by 2-3
    points. Values keep the unit they are given in (percent or fraction).

    All 19 tasks are required unless `partial=True`, which averages what is present, sets `n_tasks`, and
    leaves a group without tasks (and then `group_mean`) at NaN.
    """
    unknown = sorted(set(acc) - set(TASKS))
    if unknown:
        raise ValueError(f"vtab_means: unknown VTAB-1k tasks {unknown}; allowed: {describe_tasks()}.")
    missing = [t for t in TASKS if t not in acc]
    if missing and not partial:
        raise ValueError(
            f"vtab_means: {len(missing)} of the 19 VTAB-1k tasks are missing: {', '.join(missing)}. "
            "Give all of them, or pass partial=True to average over the tasks present."
        )
    out: dict[str, float] = {}
    for group, tasks in GROUPS.items():
        present = [float(acc[t]) for t in tasks if t in acc]
        out[group] = sum(present) / len(present) if present else math.nan
    out["group_mean"] = sum(out[g] for g in GROUPS) / len(GROUPS)  # NaN if a group is empty
    out["flat_mean"] = sum(float(v) for v in acc.values()) / len(acc) if acc else math.nan
    out["n_tasks"] = len(acc)
    return out


@dataclass(frozen=True)
class ReferenceRow:
    """One published VTAB-1k row: per-task top-1 accuracy (%) in `TASKS` order, the trainable parameters
    (millions, head excluded) and the flat 19-task mean as the source prints it."""

    accuracy: tuple[float, ...]
    params_m: float
    flat_mean: float

    def __post_init__(self) -> None:
        if len(self.accuracy) != len(TASKS):
            raise ValueError(f"a VTAB-1k row needs {len(TASKS)} accuracies, got {len(self.accuracy)}")

    def by_task(self) -> dict[str, float]:
        """The accuracies keyed by task name, ready for `vtab_means`."""
        return dict(zip(TASKS, self.accuracy, strict=True))


def _row(
    natural: tuple[float, ...], specialized: tuple[float, ...], structured: tuple[float, ...], **kwargs: float
) -> ReferenceRow:
    """A row from its three group tuples, as docs/papers/ode.md prints it; a group of the wrong length is a typo."""
    for (group, tasks), values in zip(GROUPS.items(), (natural, specialized, structured), strict=True):
        if len(values) != len(tasks):
            raise ValueError(f"a VTAB-1k row needs {len(tasks)} {group} accuracies, got {len(values)}")
    return ReferenceRow((*natural, *specialized, *structured), **kwargs)


# ViT-B/16 pre-trained on ImageNet-21k. Source: V-PETL Bench, synbol/Parameter-Efficient-Transfer-Learning-
# Benchmark @ c188fad293, README.md "Benchmark results of image classification on VTAB"
# (docs/papers/ode.md#vtab-1k-reference-numbers).
# Numbers only (facts); the group means printed there are derived from these rows.
REFERENCE_ROWS: dict[str, ReferenceRow] = {
    "full_ft": _row(
        (68.9, 87.7, 64.3, 97.2, 86.9, 87.4, 38.8),
        (79.7, 95.7, 84.2, 73.9),
        (56.3, 58.6, 41.7, 65.5, 57.5, 46.7, 25.7, 29.1),
        params_m=85.8,
        flat_mean=65.57,
    ),
    "linear": _row(
        (63.4, 85.0, 63.2, 97.0, 86.3, 36.6, 51.0),
        (78.5, 87.5, 68.6, 74.0),
        (34.3, 30.6, 33.2, 55.4, 12.5, 20.0, 9.6, 19.2),
        params_m=0.0,
        flat_mean=52.94,
    ),
    "vpt_deep": _row(
        (78.8, 90.8, 65.8, 98.0, 88.3, 78.1, 49.6),
        (81.8, 96.1, 83.4, 68.4),
        (68.5, 60.0, 46.5, 72.8, 73.6, 47.9, 32.9, 37.8),
        params_m=0.56,
        flat_mean=69.43,
    ),
    "lora": _row(
        (67.1, 91.4, 69.4, 98.8, 90.4, 85.3, 54.0),
        (84.9, 95.3, 84.4, 73.6),
        (82.9, 69.2, 49.8, 78.5, 75.7, 47.1, 31.0, 44.0),
        params_m=0.29,
        flat_mean=72.25,
    ),
    "adaptformer": _row(
        (70.8, 91.2, 70.5, 99.1, 90.9, 86.6, 54.8),
        (83.0, 95.8, 84.4, 76.3),
        (81.9, 64.3, 49.3, 80.3, 76.3, 45.7, 31.7, 41.1),
        params_m=0.16,
        flat_mean=72.32,
    ),
    "ssf": _row(
        (69.0, 92.6, 75.1, 99.4, 91.8, 90.2, 52.9),
        (87.4, 95.9, 87.4, 75.5),
        (75.9, 62.3, 53.3, 80.6, 77.3, 54.9, 29.5, 37.9),
        params_m=0.21,
        flat_mean=73.10,
    ),
    "noah": _row(
        (69.6, 92.7, 70.2, 99.1, 90.4, 86.1, 53.7),
        (84.4, 95.4, 83.9, 75.8),
        (82.8, 68.9, 49.9, 81.7, 81.8, 48.3, 32.8, 44.2),
        params_m=0.43,
        flat_mean=73.25,
    ),
    "fact": _row(
        (70.6, 90.6, 70.8, 99.1, 90.7, 88.6, 54.1),
        (84.8, 96.2, 84.5, 75.7),
        (82.6, 68.2, 49.8, 80.7, 80.8, 47.4, 33.2, 43.0),
        params_m=0.07,
        flat_mean=73.23,
    ),
}
