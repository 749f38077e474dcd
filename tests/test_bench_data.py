"""`vitlab-bench data` and the loader keys it sets the defaults of (no timing is ever asserted)."""

from __future__ import annotations

import inspect
from pathlib import Path
from types import SimpleNamespace

import pytest
from pytorch_lightning.accelerators import CPUAccelerator, CUDAAccelerator

from conftest import compose_cfg
from vitlab.bench.data_folder import make_folder
from vitlab.bench.data_loading import BUILDERS, measure, render
from vitlab.data.base import ImageDataModule
from vitlab.data.digits import DigitsDataModule
from vitlab.data.fake import FakeDataModule
from vitlab.data.imagefolder import ImageFolderDataModule
from vitlab.data.tiny_imagenet import TinyImageNetDataModule
from vitlab.data.torchvision_sets import TorchvisionDataModule
from vitlab.data.vtab1k import VTAB1kDataModule
from vitlab.errors import ConfigError

BASIC = {"hflip": 0.5, "scale": [0.08, 1.0], "randaugment": None, "random_erasing": 0.0}
TINY = {
    "images": 20,
    "classes": 4,
    "img_size": 32,
    "batch_size": 5,
    "entries": ["vitlab", "timm", "shards"],
    "augments": {"basic": BASIC},
    "cells": [[0, "basic", "warm"]],
    "rounds": 1,
    "untimed_rounds": 0,
    "gpu_rate": {"model": "ViT-B/16", "img_s": 100.0, "source": "a test"},
}


def _samples(loader: object) -> list[tuple[str, int]]:
    """The (file, label) pairs behind an entry's loader: vitlab's ImageFolder (in SeededSamples) or timm's reader."""
    dataset = loader.dataset  # type: ignore[attr-defined]
    samples = dataset.dataset.samples if hasattr(dataset, "dataset") else dataset.reader.samples
    return sorted((Path(p).name, int(t)) for p, t in samples)


def test_every_entry_loads_the_same_images_with_the_same_labels(tmp_path: Path) -> None:
    record = measure(dict(TINY), tmp_path)
    root = tmp_path / "data_loading_images"
    opts = {"batch_size": 5, "img_size": 32}
    assert _samples(BUILDERS["vitlab"](root, BASIC, 0, opts)) == _samples(BUILDERS["timm"](root, BASIC, 0, opts))
    measured = [e for e in TINY["entries"] if e not in record["skipped"]]
    assert {"vitlab", "timm"} <= set(measured)
    hists = {e: record["labels_per_pass"][f"0/basic/warm/{e}"] for e in measured}
    assert all(h == [5, 5, 5, 5] for h in hists.values()), hists  # every image once, the same labels
    assert all(record["images_per_pass"][f"0/basic/warm/{e}"] == 20 for e in measured)
    table = render(record)
    for entry in TINY["entries"]:  # measured, or named with the reason it was not
        assert f"| {entry} |" in table or f"`{entry}`: not measured" in table
    assert "Machine:" in table and "Cores (one loader worker each) to feed ViT-B/16" in table


def test_a_bad_cell_or_entry_is_refused_naming_the_key(tmp_path: Path) -> None:
    for bad in ({"cells": [[1, "basic", "lukewarm"]]}, {"entries": ["vitlab", "dali"]}):
        with pytest.raises(ConfigError, match=r"data_loading\.(cells|entries)"):
            measure({**TINY, **bad}, tmp_path)


def test_the_folder_is_made_once_and_reused(tmp_path: Path) -> None:
    root = make_folder(tmp_path / "f", 4, classes=2)
    first = (root / "train" / "class_00" / "train_00000.jpg").stat().st_mtime_ns
    make_folder(tmp_path / "f", 4, classes=2)
    assert (root / "train" / "class_00" / "train_00000.jpg").stat().st_mtime_ns == first
    assert sorted(p.name for p in (root / "train").iterdir()) == ["class_00", "class_01"]


def test_prefetch_factor_and_persistent_workers_reach_the_dataloader() -> None:
    loader = FakeDataModule(num_workers=1, prefetch_factor=3, train_size=8).train_dataloader()
    assert loader.prefetch_factor == 3 and loader.persistent_workers
    assert FakeDataModule(num_workers=1, train_size=8).val_dataloader().prefetch_factor == 2


@pytest.mark.parametrize("data", ["imagefolder", "tiny_imagenet", "cifar10"])
def test_the_image_data_configs_set_prefetch_factor(data: str) -> None:
    assert compose_cfg([f"data={data}"]).data.prefetch_factor == 2


@pytest.mark.parametrize(
    "module",
    [
        DigitsDataModule,
        FakeDataModule,
        ImageFolderDataModule,
        TinyImageNetDataModule,
        TorchvisionDataModule,
        VTAB1kDataModule,
    ],
)
def test_every_image_data_module_passes_prefetch_factor_on(module: type[ImageDataModule]) -> None:
    """The key is accepted, and handed to the base class (a constructor that dropped it would keep 2)."""
    assert "prefetch_factor" in inspect.signature(module).parameters
    assert "prefetch_factor" in inspect.getsource(module.__init__).split("super().__init__(")[1].split(")")[0]


@pytest.mark.parametrize("bad", [0, -1, "abc", True, 2.5])
def test_a_bad_prefetch_factor_is_refused_in_one_paragraph(bad: object) -> None:
    with pytest.raises(ConfigError, match=r"data.prefetch_factor=.*positive integer") as err:
        FakeDataModule(num_workers=1, prefetch_factor=bad)  # type: ignore[arg-type]
    assert "\n" not in str(err.value)


def test_prefetch_factor_without_workers_is_refused_not_ignored() -> None:
    with pytest.raises(ConfigError, match=r"no effect with data\.num_workers=0"):
        FakeDataModule(num_workers=0, prefetch_factor=4)


def test_memory_is_pinned_only_when_the_trainer_trains_on_cuda(tmp_path: Path) -> None:
    root = make_folder(tmp_path / "f", 4, classes=2)
    dm = ImageFolderDataModule(str(root), batch_size=2, num_workers=0, img_size=32)  # pin_memory defaults to true
    assert dm.pin_memory and not dm.train_dataloader().pin_memory  # no trainer, no CUDA here: no pinning, no warning
    for accelerator, pinned in ((CPUAccelerator(), False), (CUDAAccelerator(), True)):
        dm.trainer = SimpleNamespace(accelerator=accelerator, world_size=1, global_rank=0)  # type: ignore[assignment]
        assert dm.train_dataloader().pin_memory is pinned
        assert dm.val_dataloader().pin_memory is pinned
    dm.pin_memory = False
    assert not dm.train_dataloader().pin_memory
