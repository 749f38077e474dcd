"""`prepare`: a data set downloaded in its raw layout (Tiny-ImageNet, VTAB-1k, a torchvision set), checked and
written out as class folders or shards with a manifest (`vitlab-data prepare`; docs/data.md).

The data module that trains on a raw layout reads it here too, so the copy has its splits and labels. Before
anything is written every image is decoded, every split must hold images, every label must be one of the
classes and the counts must be the published ones; a small copy passes the counts only with
`expect_counts=false`, never silently.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from vitlab.data.base import ImageDataModule
from vitlab.data.prepare_folder import SPLITS, Split, check_out, class_folders, clear, collect, decode, write_folder
from vitlab.data.tiny_imagenet import TinyImageNetDataModule
from vitlab.data.torchvision_sets import SPECS, TorchvisionDataModule
from vitlab.data.vtab1k import VTAB1kDataModule
from vitlab.data.vtab_check import check_task
from vitlab.data.vtab_tasks import EXPECTED_LINES, LIST_FILES, NUM_CLASSES, TASKS
from vitlab.errors import ConfigError
from vitlab.extras import require

FORMATS = ("folder", "shards")
SMALL = "a small or partial copy is prepared only with expect_counts=false"


@dataclass(frozen=True)
class Expected:
    """Published counts: classes, images per split and images of every class per split. The key `train+val`
    is a training set from which vitlab holds out the validation split."""

    classes: int
    totals: Mapping[str, int]
    per_class: Mapping[str, int] = field(default_factory=dict)


# split sizes as the configs/data/<name>.yaml headers and docs/data.md give them
TORCHVISION_COUNTS: dict[str, Expected] = {
    "cifar10": Expected(10, {"train+val": 50000, "test": 10000}, {"train+val": 5000, "test": 1000}),
    "cifar100": Expected(100, {"train+val": 50000, "test": 10000}, {"train+val": 500, "test": 100}),
    "svhn": Expected(10, {"train+val": 73257, "test": 26032}),
    "flowers102": Expected(102, {"train": 1020, "val": 1020, "test": 6149}, {"train": 10, "val": 10}),
    "oxford_pets": Expected(37, {"train+val": 3680, "test": 3669}),
    "dtd": Expected(47, {"train": 1880, "val": 1880, "test": 1880}, {"train": 40, "val": 40, "test": 40}),
    "stl10": Expected(10, {"train+val": 5000, "test": 8000}, {"train+val": 500, "test": 800}),
}
TINY_COUNTS = Expected(200, {"train+val": 100000, "test": 10000}, {"train+val": 500, "test": 50})
# the data keys that select samples, per source; anything else changes nothing in a copy and is refused
SPLIT_KEYS = ("val_fraction", "split_seed")
VTAB_KEYS = ("task", "protocol", "final_val")


@dataclass
class Source:
    """One data set to prepare: its data module, the config that rebuilds it, where each split is read from,
    the published counts, and the class names (None: labels only)."""

    module: ImageDataModule
    config: dict[str, Any]
    origins: dict[str, str]
    expected: Expected
    names: list[str] | None = None


def names() -> list[str]:
    """Every data set `prepare` reads."""
    return ["tiny_imagenet", "vtab1k", *SPECS]


def _options(name: str, given: Mapping[str, Any]) -> dict[str, Any]:
    allowed = VTAB_KEYS if name == "vtab1k" else SPLIT_KEYS
    unknown = sorted(set(given) - set(allowed))
    if unknown:
        raise ConfigError(
            f"prepare {name}: {', '.join(unknown)} {'is' if len(unknown) == 1 else 'are'} not a key of prepare; "
            f"allowed: format ({' | '.join(FORMATS)}), overwrite, expect_counts and the data keys that select "
            f"samples: {', '.join(allowed)} (transforms, batch size and workers are chosen when training)."
        )
    fraction, seed = given.get("val_fraction", 0.5), given.get("split_seed", 0)
    if isinstance(fraction, bool) or not isinstance(fraction, (int, float)) or not 0 < fraction < 1:
        raise ConfigError(f"prepare {name}: val_fraction={fraction!r} must be a number between 0 and 1 (exclusive).")
    if isinstance(seed, bool) or not isinstance(seed, int):
        raise ConfigError(f"prepare {name}: split_seed={seed!r} must be an integer.")
    return dict(given)


def data_config(name: str, raw: Path, options: Mapping[str, Any]) -> dict[str, Any]:
    """`data=<name>` as a training run composes it (transforms included: a packed set is trained with them),
    with `root` the raw folder and the given split keys."""
    from omegaconf import OmegaConf, open_dict

    from vitlab.compose import compose_config

    data = compose_config("train", [f"data={name}"]).data
    with open_dict(data):
        data.root = str(raw)
        for key, value in options.items():
            data[key] = value
    return OmegaConf.to_container(data, resolve=True)  # type: ignore[return-value]


def _params(config: Mapping[str, Any]) -> dict[str, Any]:
    """The constructor arguments of a data config."""
    return {key: value for key, value in config.items() if key != "_target_"}


def _tiny(raw: Path, config: dict[str, Any]) -> list[Source]:
    module = TinyImageNetDataModule(**_params(config))
    annotations = raw / "val" / "val_annotations.txt"
    known = set(module.wnids)
    for number, line in enumerate(annotations.read_text().splitlines(), start=1):
        fields = line.split("\t")
        if line.strip() and (len(fields) < 2 or fields[1] not in known):
            raise ConfigError(
                f"prepare tiny_imagenet: {annotations} line {number}: {line.strip()!r} does not name one of the "
                f"{len(known)} classes of wnids.txt (labels 0..{len(known) - 1}); each line is "
                "'<file>\\t<wnid>\\t<box>'. Re-extract tiny-imagenet-200.zip."
            )
    origins = {"train": f"{raw}/train", "val": f"{raw}/train (held out)", "test": str(annotations)}
    return [Source(module, config, origins, TINY_COUNTS, list(module.wnids))]


def _vtab_labels(task_dir: Path, task: str) -> None:
    """A label at or above the task's class count, named by list file and line."""
    known = NUM_CLASSES[task]
    for list_file in LIST_FILES:
        path = task_dir / list_file
        lines = path.read_text().splitlines() if path.is_file() else []
        for number, line in enumerate(lines, start=1):
            label = line.strip().rsplit(maxsplit=1)[-1] if line.strip() else ""
            if label.isdigit() and int(label) >= known:
                raise ConfigError(
                    f"prepare vtab1k: {path} line {number}: label {label} is outside the {known} classes of "
                    f"'{task}' (allowed 0..{known - 1}). Is this the right task folder?"
                )


def _vtab(raw: Path, config: dict[str, Any], task: str | None, expect_counts: bool) -> list[Source]:
    tasks = [task] if task is not None else [t for t in TASKS if (raw / t).is_dir()]
    if not tasks:
        raise ConfigError(
            f"prepare vtab1k: {raw} holds none of the 19 task folders of the processed VTAB-1k layout "
            f"({', '.join(TASKS)}); give the folder that holds them, or task=<name> for one task."
        )
    sources = []
    for name in tasks:
        if name in NUM_CLASSES:
            _vtab_labels(raw / name, name)
        task_config = {**config, "task": name}
        module = VTAB1kDataModule(**_params(task_config))
        problems = check_task(raw, name, expected_counts=expect_counts).problems
        if problems:
            hint = f"; {SMALL}" if expect_counts else ""
            raise ConfigError(f"prepare vtab1k: task '{name}' under {raw} is not usable: {'; '.join(problems)}{hint}.")
        files = module.split_files()
        totals = {split: EXPECTED_LINES[f] for split, f in zip(SPLITS, files, strict=True) if f in EXPECTED_LINES}
        origins = {split: str(raw / name / f) for split, f in zip(SPLITS, files, strict=True)}
        sources.append(Source(module, task_config, origins, Expected(NUM_CLASSES[name], totals)))
    return sources


def _torchvision(name: str, raw: Path, config: dict[str, Any]) -> list[Source]:
    module = TorchvisionDataModule(**{**_params(config), "download": False})
    module.setup()
    folder = str(raw / module.spec.folder)
    origins = {"train": folder, "val": folder + (" (held out)" if module.spec.val is None else ""), "test": folder}
    base = module.train_set
    while hasattr(base, "dataset"):
        base = base.dataset
    classes = getattr(base, "classes", None)
    return [Source(module, config, origins, TORCHVISION_COUNTS[name], list(classes) if classes else None)]


def sources(name: str, raw: Path, expect_counts: bool, data: Mapping[str, Any]) -> list[Source]:
    """The data sets `prepare(name, raw, ...)` writes: one, or one per VTAB-1k task found under `raw`."""
    if name not in names():
        raise ConfigError(f"prepare: {name!r} is not a data set prepare reads; allowed: {', '.join(names())}.")
    if not raw.is_dir():
        raise ConfigError(f"prepare {name}: the raw folder {raw} does not exist (give the unpacked download).")
    options = _options(name, data)
    task = options.pop("task", None)
    config = data_config(name, raw, options)
    if name == "tiny_imagenet":
        return _tiny(raw, config)
    if name == "vtab1k":
        return _vtab(raw, config, task, expect_counts)
    return _torchvision(name, raw, config)


def _check_counts(name: str, source: Source, splits: Mapping[str, Split]) -> None:
    """The published class count, split sizes and per-class counts (see `Expected`)."""
    expected, module = source.expected, source.module
    found: list[str] = []
    if module.num_classes != expected.classes:
        found.append(f"{module.num_classes} classes instead of {expected.classes}")
    for key, want in expected.totals.items():
        parts = key.split("+")
        have = sum(len(splits[p].samples) for p in parts)
        if have != want:
            found.append(f"{key} has {have} images instead of {want}")
        per_class = expected.per_class.get(key)
        counts = Counter(s.label for p in parts for s in splits[p].samples)
        off = [label for label in range(module.num_classes) if counts[label] != per_class] if per_class else []
        if off:
            found.append(f"{key} has {counts[off[0]]} images of class {off[0]} instead of {per_class}")
    if found:
        raise ConfigError(
            f"prepare {name}: {source.config['root']} is not the published data set: {'; '.join(found)}. {SMALL}."
        )


def _check(name: str, source: Source, splits: Mapping[str, Split], fmt: str, expect_counts: bool) -> None:
    """Every split holds images, every label is a class; the folder format needs every class in every split."""
    classes = source.module.num_classes
    for split, data in splits.items():
        if not data.samples:
            raise ConfigError(
                f"prepare {name}: the {split} split is empty (read from {source.origins[split]}); every split "
                "needs images. Re-extract the download, or check the split keys (val_fraction)."
            )
        bad = next((s for s in data.samples if not 0 <= s.label < classes), None)
        if bad is not None:
            raise ConfigError(
                f"prepare {name}: {bad.describe(source.origins[split])} has label {bad.label}, outside the "
                f"{classes} classes (allowed 0..{classes - 1}). The download is corrupt or not {name}."
            )
        missing = sorted(set(range(classes)) - {s.label for s in data.samples})
        if fmt == "folder" and missing:
            raise ConfigError(
                f"prepare {name}: the {split} split ({source.origins[split]}) has no image of {len(missing)} of "
                f"the {classes} classes (labels {missing[:5]}{' ...' if len(missing) > 5 else ''}); "
                "format=folder needs every class in every split (data=imagefolder numbers classes by the "
                "folders of train/ and requires them in val/ and test/). Use format=shards."
            )
    if expect_counts:
        _check_counts(name, source, splits)


def prepare(
    name: str,
    raw: str | Path,
    out: str | Path,
    *,
    format: str = "folder",
    overwrite: bool = False,
    expect_counts: bool = True,
    progress: bool = False,
    **data: Any,
) -> dict[str, Any]:
    """Check the raw download `raw` of `name` (one of `names()`) and write it to `out`.

    `data` holds the keys that select samples (`val_fraction`, `split_seed`; VTAB-1k: `task`, `protocol`,
    `final_val`). Returns the manifest; for VTAB-1k without `task`, every task found is written to
    `out/<task>` and the result maps each task to its manifest. Nothing is written unless every check of
    every data set passes.
    """
    if format not in FORMATS:
        raise ConfigError(f"prepare: format={format!r} is not an output format; allowed: {', '.join(FORMATS)}.")
    for key, value in (("overwrite", overwrite), ("expect_counts", expect_counts)):
        if not isinstance(value, bool):
            raise ConfigError(f"prepare: {key}={value!r} must be true or false.")
    if format == "shards":
        require("data", "vitlab-data prepare format=shards")  # before minutes of checking, not after
    raw, out = Path(raw), Path(out)
    check_out(out, overwrite)
    found = sources(name, raw, expect_counts, data)
    plans = []
    for source in found:
        source.module.setup()
        module = source.module
        splits = {"train": collect(module.train_set), "val": collect(module.val_set), "test": collect(module.test_set)}
        _check(name, source, splits, format, expect_counts)
        plans.append((source, splits, decode(name, splits, progress)))
    per_task = name == "vtab1k" and "task" not in data
    manifests = {}
    for source, splits, sizes in plans:
        target = out / source.config["task"] if per_task else out
        if format == "shards":
            manifests[str(target)] = _pack(source, target, overwrite, progress)
            continue
        if overwrite:
            clear(target)
        classes = class_folders(source.names, source.module.num_classes)
        manifests[str(target)] = write_folder(target, splits, sizes, classes, source.config, progress)
    if per_task:
        return {Path(path).name: manifest for path, manifest in manifests.items()}
    return next(iter(manifests.values()))


def _pack(source: Source, out: Path, overwrite: bool, progress: bool) -> dict[str, Any]:
    """format=shards: the checked module packed by `vitlab.data.shards.pack`."""
    from vitlab.data.shards.pack import pack

    return pack(source.module, str(out), source=source.config, overwrite=overwrite, progress=progress)
