"""The samples of a set-up data module (files or array images), their decoding check, and the class-folder
tree `prepare` writes from them with its `manifest.json` (docs/data.md).

A file is copied byte for byte; an image held in an array (CIFAR, SVHN, STL-10) is written as a lossless
PNG. Class folders are named so that their sorted order is the source's label order (`class_folders`), so
`data=imagefolder` on the copy numbers the classes as the source module did.
"""

from __future__ import annotations

import copy
import hashlib
import io
import json
import re
import shutil
import statistics
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

from PIL import Image
from torch.utils.data import Dataset

import vitlab
from vitlab.data.corrupt import UNREADABLE
from vitlab.data.fingerprint import unwrap
from vitlab.data.torchvision_sets import labels_of
from vitlab.errors import ConfigError

T = TypeVar("T")
MANIFEST = "manifest.json"
SPLITS = ("train", "val", "test")
FORMAT, VERSION = "vitlab-folder", 1


@dataclass(frozen=True)
class Sample:
    """One image of a split: its label and either its file (`path`) or its index into an array data set."""

    label: int
    path: Path | None
    index: int

    def describe(self, origin: str) -> str:
        """The file, or the sample's position in the data set read from `origin`, for messages."""
        return str(self.path) if self.path is not None else f"sample {self.index} of {origin}"


@dataclass
class Split:
    """A split's samples and the data set they index (for array images)."""

    samples: list[Sample]
    dataset: Dataset

    def image(self, sample: Sample) -> Image.Image:
        """The decoded image (PIL, as stored: not converted, not transformed)."""
        if sample.path is not None:
            with Image.open(sample.path) as img:
                img.load()
                return img
        raw = copy.copy(self.dataset)  # the data set without its transforms: a PIL image, as torchvision stores it
        raw.transform = raw.target_transform = None  # type: ignore[attr-defined]
        return raw[sample.index][0]

    def payload(self, sample: Sample) -> tuple[bytes, str]:
        """(the bytes to write, the file suffix): the original file, or a lossless PNG of an array image."""
        if sample.path is not None:
            return sample.path.read_bytes(), sample.path.suffix
        buffer = io.BytesIO()
        self.image(sample).save(buffer, format="PNG")
        return buffer.getvalue(), ".png"


def collect(dataset: Dataset) -> Split:
    """The samples a split reads, in its order: files of `samples` lists (LabelledFiles, ImageFolder) or of
    torchvision's file-backed sets (Flowers102, Pets, DTD), else images held in arrays."""
    base, indices = unwrap(dataset)
    pairs = getattr(base, "samples", None)
    if isinstance(pairs, list):
        return Split([Sample(int(pairs[i][1]), Path(pairs[i][0]), i) for i in indices], base)
    labels = labels_of(base)
    files = getattr(base, "_image_files", None) or getattr(base, "_images", None)
    if isinstance(files, list) and len(files) == len(labels):
        return Split([Sample(int(labels[i]), Path(files[i]), i) for i in indices], base)
    return Split([Sample(int(labels[i]), None, i) for i in indices], base)


def track(items: Iterable[T], total: int, description: str, show: bool) -> Iterator[T]:
    """`items` with a progress bar on stderr when `show` (rich; removed when done)."""
    if not show:
        yield from items
        return
    from rich.console import Console
    from rich.progress import track as rich_track

    yield from rich_track(items, description=description, total=total, console=Console(stderr=True), transient=True)


def class_folders(names: Sequence[str] | None, num_classes: int) -> list[str]:
    """Folder names whose sorted order is the label order: the class names when they already sort that way
    and are plain file names, else `<label>_<name>` (or `<label>`) zero-padded."""
    width = len(str(num_classes - 1))
    if names is None or len(names) != num_classes:
        return [f"{label:0{width}d}" for label in range(num_classes)]
    safe = [re.sub(r"[\\/\x00]", "_", str(name)).strip() or "_" for name in names]
    plain = all(not s.startswith(".") for s in safe) and len(set(safe)) == len(safe)
    if plain and list(safe) == sorted(safe) and safe == [str(n) for n in names]:
        return safe
    return [f"{label:0{width}d}_{name}" for label, name in enumerate(safe)]


def size_summary(sizes: Sequence[tuple[int, int]]) -> dict[str, dict[str, int]]:
    """{"width": {"min", "median", "max"}, "height": {...}} of (width, height) pairs (median: the lower one)."""
    out = {}
    for axis, values in (("width", [w for w, _ in sizes]), ("height", [h for _, h in sizes])):
        out[axis] = {"min": min(values), "median": statistics.median_low(values), "max": max(values)}
    return out


def _unique_name(folder_names: set[str], stem: str, suffix: str) -> str:
    """`stem + suffix`, or `stem_<n> + suffix` when a file of that name is already in the class folder."""
    name, n = f"{stem}{suffix}", 1
    while name in folder_names:
        name, n = f"{stem}_{n}{suffix}", n + 1
    folder_names.add(name)
    return name


def decode(name: str, splits: Mapping[str, Split], progress: bool) -> dict[str, list[tuple[int, int]]]:
    """Decode every image (refusing unreadable ones, all named at once); (width, height) per split."""
    sizes: dict[str, list[tuple[int, int]]] = {split: [] for split in splits}
    bad: list[str] = []
    work = [(split, s) for split, data in splits.items() for s in data.samples]
    for split, sample in track(work, len(work), f"checking {name}", progress):
        try:
            sizes[split].append(splits[split].image(sample).size)
        except UNREADABLE as exc:
            bad.append(f"{sample.path} ({type(exc).__name__})")
    if bad:
        shown = ", ".join(sorted(set(bad))[:10])
        raise ConfigError(
            f"prepare {name}: {len(bad)} images do not decode: {shown}{' ...' if len(set(bad)) > 10 else ''}. "
            "Re-extract the download (or remove these files from it); nothing was written."
        )
    return sizes


def check_out(out: Path, overwrite: bool) -> None:
    """A new or empty output folder, or `overwrite`; checked before anything is read or written."""
    if out.exists() and not out.is_dir():
        raise ConfigError(f"prepare: the output {out} is a file; give a folder (new or empty).")
    if out.is_dir() and any(out.iterdir()) and not overwrite:
        raise ConfigError(
            f"prepare: the output folder {out} is not empty; nothing was written or deleted. Give a new or "
            f"empty folder, or overwrite=true to replace its {', '.join(SPLITS)} folders and {MANIFEST}."
        )


def clear(out: Path) -> None:
    """overwrite=true, format=folder: remove what a previous prepare wrote (the split folders, the manifest),
    so a stale class folder is not read as a class; other files stay."""
    for split in SPLITS:
        shutil.rmtree(out / split, ignore_errors=True)
    (out / MANIFEST).unlink(missing_ok=True)


def write_folder(
    out: Path,
    splits: Mapping[str, Split],
    sizes: Mapping[str, Sequence[tuple[int, int]]],
    classes: Sequence[str],
    source: Mapping[str, Any],
    progress: bool = False,
) -> dict[str, Any]:
    """Write `<out>/<split>/<class>/<file>` and `<out>/manifest.json` (written last: an interrupted run leaves
    no manifest); return the manifest."""
    records: list[str] = []
    manifest_splits: dict[str, Any] = {}
    total = sum(len(split.samples) for split in splits.values())
    work = ((name, split, s) for name, split in splits.items() for s in split.samples)
    taken: dict[tuple[str, int], set[str]] = {}
    for name, split, sample in track(work, total, f"writing {out}", progress):
        data, suffix = split.payload(sample)
        stem = sample.path.stem if sample.path is not None else f"{sample.index:06d}"
        folder = out / name / classes[sample.label]
        if (name, sample.label) not in taken:
            folder.mkdir(parents=True, exist_ok=True)
        file_name = _unique_name(taken.setdefault((name, sample.label), set()), stem, suffix)
        (folder / file_name).write_bytes(data)
        records.append(f"{name}/{classes[sample.label]}/{file_name}\t{len(data)}\t{sample.label}\n")
    for name, split in splits.items():
        counts = [0] * len(classes)
        for sample in split.samples:
            counts[sample.label] += 1
        manifest_splits[name] = {
            "samples": len(split.samples),
            "per_class": dict(zip(classes, counts, strict=True)),
            "image_size": size_summary(sizes[name]),
        }
    manifest = {
        "format": FORMAT,
        "version": VERSION,
        "kind": "folder",
        "classes": list(classes),
        "splits": manifest_splits,
        "sha256": hashlib.sha256("".join(sorted(records)).encode()).hexdigest(),
        "source": dict(source),
        "vitlab_version": vitlab.__version__,
    }
    (out / MANIFEST).write_text(json.dumps(manifest, indent=1) + "\n")
    return manifest
