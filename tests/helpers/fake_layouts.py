"""Miniature data-set folders in the layouts vitlab reads from disk, so the data options that never download
(imagefolder, tiny_imagenet, vtab1k) are checked offline on real files."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image


def image_folder(
    root: Path,
    classes: tuple[str, ...] = ("cat", "dog", "eel"),
    per_class: int = 4,
    splits: tuple[str, ...] = ("train", "test"),
    size: int = 20,
) -> None:
    """`<root>/<split>/<class>/<i>.png` for each of `splits` (`size`x`size` random RGB)."""
    rng = np.random.default_rng(0)
    for split in splits:
        for c in classes:
            (root / split / c).mkdir(parents=True, exist_ok=True)
            for i in range(per_class):
                Image.fromarray(rng.integers(0, 255, (size, size, 3), dtype=np.uint8)).save(
                    root / split / c / f"{i}.png"
                )


def tiny_imagenet(root: Path, wnids: tuple[str, ...] = ("n01", "n02", "n03"), per_class: int = 10) -> None:
    """wnids.txt, train/<wnid>/images/*.JPEG, val/images/*.JPEG and val/val_annotations.txt (64 px)."""
    rng = np.random.default_rng(0)
    (root / "val" / "images").mkdir(parents=True)
    (root / "wnids.txt").write_text("\n".join(wnids) + "\n")
    annotations = []
    for w in wnids:
        (root / "train" / w / "images").mkdir(parents=True)
        for i in range(per_class):
            img = Image.fromarray(rng.integers(0, 255, (64, 64, 3), dtype=np.uint8))
            img.save(root / "train" / w / "images" / f"{w}_{i}.JPEG")
        for i in range(2):
            img.save(root / "val" / "images" / f"val_{w}_{i}.JPEG")
            annotations.append(f"val_{w}_{i}.JPEG\t{w}\t0\t0\t63\t63")
    (root / "val" / "val_annotations.txt").write_text("\n".join(annotations) + "\n")


def vtab_task(task_dir: Path, classes: int = 3, per_class: tuple[int, int, int] = (2, 1, 2)) -> None:
    """`<task_dir>/images/*.png` and the four list files (`<image path> <label>` lines) of one VTAB-1k task."""
    rng = np.random.default_rng(0)
    (task_dir / "images").mkdir(parents=True)
    lists: dict[str, list[str]] = {"train800": [], "val200": [], "test": []}
    for label in range(classes):
        for split, n in zip(lists, per_class, strict=True):
            for i in range(n):
                name = f"images/{split}_{label}_{i}.png"
                Image.fromarray(rng.integers(0, 255, (12, 20, 3), dtype=np.uint8)).save(task_dir / name)
                lists[split].append(f"{name} {label}")
    lists["train800val200"] = lists["train800"] + lists["val200"]
    for split, lines in lists.items():
        (task_dir / f"{split}.txt").write_text("\n".join(lines) + "\n")
