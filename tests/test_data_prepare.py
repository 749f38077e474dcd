"""`vitlab-data prepare`: small generated copies of each raw layout (Tiny-ImageNet, VTAB-1k, CIFAR-10's pickles)
become class folders that `data=imagefolder` reads with the source module's splits and labels, with a manifest;
bad downloads are refused with one paragraph (exit 2) before anything is written. Nothing is downloaded."""

from __future__ import annotations

import hashlib
import json
import pickle
import sys
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import vitlab
from helpers import fake_layouts
from vitlab.cli.data_prepare import prepare_command
from vitlab.data.imagefolder import ImageFolderDataModule
from vitlab.data.prepare import prepare, sources
from vitlab.data.prepare_folder import collect
from vitlab.errors import ConfigError

SMALL = ["expect_counts=false"]
CIFAR_NAMES = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]


def cifar10(root: Path, per_class: int = 1, test_per_class: int = 2) -> np.ndarray:
    """cifar-10-batches-py/: five training batches, a test batch and batches.meta as torchvision reads them
    (labels cycle through the 10 classes); returns the test batch's images (N, 32, 32, 3)."""
    folder = root / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    rng = np.random.default_rng(0)

    def batch(name: str, n: int) -> np.ndarray:
        data = rng.integers(0, 255, (n * 10, 3072), dtype=np.uint8)
        entry = {"data": data, "labels": [i % 10 for i in range(n * 10)]}
        (folder / name).write_bytes(pickle.dumps(entry))
        return data.reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1)

    for i in range(1, 6):
        batch(f"data_batch_{i}", per_class)
    (folder / "batches.meta").write_bytes(pickle.dumps({"label_names": CIFAR_NAMES}))
    return batch("test_batch", test_per_class)


@pytest.fixture
def no_md5(monkeypatch) -> None:
    """The generated pickles are not the published ones: torchvision's checksum test is skipped."""
    monkeypatch.setattr("torchvision.datasets.cifar.check_integrity", lambda *args, **kwargs: True)


def contents(dataset) -> Counter:
    """A split as a multiset of (image bytes digest, label): the same images with the same labels."""
    split = collect(dataset)
    return Counter((hashlib.sha256(split.payload(s)[0]).hexdigest(), s.label) for s in split.samples)


def assert_train_ready(name: str, raw: Path, out: Path, **data) -> ImageFolderDataModule:
    """The imagefolder module on `out` has the source module's splits: the same images under the same labels."""
    (source,) = sources(name, raw, False, data)
    source.module.setup()
    prepared = ImageFolderDataModule(str(out), num_workers=0, pin_memory=False)
    assert prepared.num_classes == source.module.num_classes
    assert prepared.split_sizes() == source.module.split_sizes()
    for split in ("train_set", "val_set", "test_set"):
        assert contents(getattr(prepared, split)) == contents(getattr(source.module, split)), split
    return prepared


def test_tiny_imagenet_becomes_a_class_folder_tree_with_the_same_splits_and_labels(tmp_path: Path) -> None:
    fake_layouts.tiny_imagenet(tmp_path / "raw", wnids=("n03", "n01", "n02"), per_class=5)  # unsorted, as wnids.txt
    manifest = prepare("tiny_imagenet", tmp_path / "raw", tmp_path / "out", expect_counts=False, val_fraction=0.2)
    prepared = assert_train_ready("tiny_imagenet", tmp_path / "raw", tmp_path / "out", val_fraction=0.2)
    assert prepared.classes == ["0_n03", "1_n01", "2_n02"]  # sorted folders keep wnids.txt's label order
    assert manifest == json.loads((tmp_path / "out" / "manifest.json").read_text())
    assert manifest["kind"] == "folder" and manifest["classes"] == prepared.classes
    assert {k: v["samples"] for k, v in manifest["splits"].items()} == {"train": 12, "val": 3, "test": 6}
    assert manifest["splits"]["test"]["per_class"] == {"0_n03": 2, "1_n01": 2, "2_n02": 2}
    assert manifest["splits"]["train"]["image_size"]["width"] == {"min": 64, "median": 64, "max": 64}
    source = manifest["source"]  # data=tiny_imagenet as training composes it, on the raw folder
    assert source["_target_"] == "vitlab.data.tiny_imagenet.TinyImageNetDataModule" and source["img_size"] == 64
    assert source["root"] == str(tmp_path / "raw") and source["val_fraction"] == 0.2 and "augment" in source
    assert manifest["vitlab_version"] == vitlab.__version__
    files = sorted(p for p in (tmp_path / "out").rglob("*") if p.is_file() and p.name != "manifest.json")
    lines = [f"{p.relative_to(tmp_path / 'out')}\t{p.stat().st_size}\t{p.parent.name[0]}\n" for p in files]
    assert manifest["sha256"] == hashlib.sha256("".join(sorted(lines)).encode()).hexdigest()


def test_every_vtab_task_found_is_prepared_into_its_own_folder(tmp_path: Path, capsys) -> None:
    fake_layouts.vtab_task(tmp_path / "vtab" / "dtd")
    fake_layouts.vtab_task(tmp_path / "vtab" / "kitti", classes=4)
    assert prepare_command(["vtab1k", str(tmp_path / "vtab"), str(tmp_path / "out"), "protocol=final", *SMALL]) == 0
    out = capsys.readouterr().out
    assert f"{tmp_path / 'out' / 'kitti'}: 4 classes; train 12, val 8, test 8 images" in out
    assert f"train on it: vitlab-train data=imagefolder data.root={tmp_path / 'out' / 'kitti'}\n" in out
    for task in ("dtd", "kitti"):
        prepared = assert_train_ready("vtab1k", tmp_path / "vtab", tmp_path / "out" / task, task=task, protocol="final")
        assert prepared.classes[:3] == ["0", "1", "2"]
        source = json.loads((tmp_path / "out" / task / "manifest.json").read_text())["source"]
        assert source["task"] == task and source["protocol"] == "final"


def test_cifar10_arrays_are_written_as_lossless_pngs(tmp_path: Path, no_md5) -> None:
    test_images = cifar10(tmp_path / "raw")
    kwargs = {"expect_counts": False, "val_fraction": 0.2, "progress": True}  # the bar goes to stderr
    manifest = prepare("cifar10", tmp_path / "raw", tmp_path / "out", **kwargs)
    prepared = assert_train_ready("cifar10", tmp_path / "raw", tmp_path / "out", val_fraction=0.2)
    assert prepared.classes == CIFAR_NAMES  # already in label order: the names are kept
    assert manifest["splits"]["test"]["per_class"] == dict.fromkeys(CIFAR_NAMES, 2)
    written = np.asarray(Image.open(tmp_path / "out" / "test" / "bird" / "000002.png"))
    assert np.array_equal(written, test_images[2])  # test image 2 is a bird, pixel for pixel


def test_shards_hold_the_checked_splits_and_the_source_config(tmp_path: Path, capsys) -> None:
    pytest.importorskip("webdataset")
    from vitlab.data.shards.module import ShardsDataModule

    fake_layouts.vtab_task(tmp_path / "vtab" / "dtd")
    argv = ["vtab1k", str(tmp_path / "vtab"), str(tmp_path / "out"), "task=dtd", "format=shards", *SMALL]
    assert prepare_command(argv) == 0
    assert f"train on it: vitlab-train data=shards data.root={tmp_path / 'out'}" in capsys.readouterr().out
    packed = ShardsDataModule(str(tmp_path / "out"), num_workers=0, img_size=16)
    (source,) = sources("vtab1k", tmp_path / "vtab", False, {"task": "dtd"})
    source.module.setup()
    assert packed.manifest["source"] == source.config and packed.num_classes == 3
    assert packed.split_sizes() == source.module.split_sizes()
    for split in ("train_set", "val_set", "test_set"):
        shards = getattr(packed, split)
        got = Counter((hashlib.sha256(shards.read(i)).hexdigest(), shards.targets[i]) for i in range(len(shards)))
        assert got == contents(getattr(source.module, split)), split


def test_published_counts_are_checked_unless_a_small_copy_is_declared(tmp_path: Path) -> None:
    fake_layouts.tiny_imagenet(tmp_path / "raw")
    with pytest.raises(ConfigError, match=r"3 classes instead of 200.*expect_counts=false") as info:
        prepare("tiny_imagenet", tmp_path / "raw", tmp_path / "out")
    assert "train+val has 30 images instead of 100000" in str(info.value)
    assert not (tmp_path / "out").exists()


def refused(capsys, *argv: str) -> str:
    """Run the command expecting a refusal: exit 2, one paragraph on stderr, nothing written; its text."""
    assert prepare_command(list(argv)) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and err.count("\n") == 1, err
    return err


def test_a_corrupt_image_is_named_and_nothing_is_written(tmp_path: Path, capsys) -> None:
    fake_layouts.tiny_imagenet(tmp_path / "raw")
    broken = tmp_path / "raw" / "train" / "n02" / "images" / "n02_3.JPEG"
    broken.write_bytes(broken.read_bytes()[:200])  # truncated
    err = refused(capsys, "tiny_imagenet", str(tmp_path / "raw"), str(tmp_path / "out"), *SMALL)
    assert f"1 images do not decode: {broken} (OSError)" in err and "nothing was written" in err
    assert not (tmp_path / "out").exists()


def test_an_empty_split_is_refused_naming_where_it_is_read(tmp_path: Path, capsys) -> None:
    fake_layouts.tiny_imagenet(tmp_path / "raw")
    (tmp_path / "raw" / "val" / "val_annotations.txt").write_text("")
    err = refused(capsys, "tiny_imagenet", str(tmp_path / "raw"), str(tmp_path / "out"), *SMALL)
    assert f"the test split is empty (read from {tmp_path / 'raw' / 'val' / 'val_annotations.txt'})" in err


def test_labels_outside_the_classes_are_refused_naming_file_line_and_range(tmp_path: Path, capsys, no_md5) -> None:
    fake_layouts.vtab_task(tmp_path / "vtab" / "dtd")
    test_list = tmp_path / "vtab" / "dtd" / "test.txt"
    test_list.write_text(test_list.read_text().replace(" 2\n", " 47\n", 1))  # dtd has 47 classes: 0..46
    err = refused(capsys, "vtab1k", str(tmp_path / "vtab"), str(tmp_path / "out"), "task=dtd", *SMALL)
    assert f"{test_list} line 5: label 47 is outside the 47 classes of 'dtd' (allowed 0..46)" in err

    fake_layouts.tiny_imagenet(tmp_path / "tiny")
    annotations = tmp_path / "tiny" / "val" / "val_annotations.txt"
    annotations.write_text(annotations.read_text().replace("\tn02\t", "\tn99\t", 1))
    err = refused(capsys, "tiny_imagenet", str(tmp_path / "tiny"), str(tmp_path / "out"), *SMALL)
    assert f"{annotations} line 3: 'val_n02_0.JPEG\\tn99" in err and "(labels 0..2)" in err

    cifar10(tmp_path / "raw")
    test_batch = tmp_path / "raw" / "cifar-10-batches-py" / "test_batch"
    entry = pickle.loads(test_batch.read_bytes())
    entry["labels"][4] = 12
    test_batch.write_bytes(pickle.dumps(entry))
    err = refused(capsys, "cifar10", str(tmp_path / "raw"), str(tmp_path / "out"), "val_fraction=0.2", *SMALL)
    assert "sample 4 of" in err and "has label 12, outside the 10 classes (allowed 0..9)" in err


def test_a_class_missing_from_a_split_is_refused_for_the_folder_format(tmp_path: Path, capsys) -> None:
    fake_layouts.vtab_task(tmp_path / "vtab" / "dtd")
    test_list = tmp_path / "vtab" / "dtd" / "test.txt"  # protocol final: val and test read test.txt
    test_list.write_text("".join(line + "\n" for line in test_list.read_text().splitlines() if line[-2:] != " 1"))
    argv = ["vtab1k", str(tmp_path / "vtab"), str(tmp_path / "out"), "task=dtd", "protocol=final", *SMALL]
    err = refused(capsys, *argv)
    assert f"the val split ({test_list}) has no image of 1 of the 3 classes (labels [1])" in err
    assert "Use format=shards" in err


def test_a_non_empty_output_is_refused_unless_overwrite(tmp_path: Path, capsys) -> None:
    fake_layouts.tiny_imagenet(tmp_path / "raw")
    (tmp_path / "out" / "train" / "stale").mkdir(parents=True)
    (tmp_path / "out" / "notes.txt").write_text("mine")
    argv = ["tiny_imagenet", str(tmp_path / "raw"), str(tmp_path / "out"), *SMALL]
    err = refused(capsys, *argv)
    assert f"the output folder {tmp_path / 'out'} is not empty; nothing was written or deleted" in err
    assert (tmp_path / "out" / "train" / "stale").is_dir()
    assert prepare_command([*argv, "overwrite=true"]) == 0
    assert not (tmp_path / "out" / "train" / "stale").exists()  # a stale class folder would be read as a class
    assert (tmp_path / "out" / "notes.txt").read_text() == "mine"  # only what prepare writes is replaced


@pytest.mark.parametrize(
    ("argv", "expected"),
    [
        (["imagenet", "raw", "out"], "'imagenet' is not a data set prepare reads; allowed: tiny_imagenet, vtab1k, "),
        (["tiny_imagenet", "raw", "out", "img_size=64"], "img_size is not a key of prepare; allowed: format"),
        (["tiny_imagenet", "raw", "out", "format=zip"], "format='zip' is not an output format; allowed: folder"),
        (["tiny_imagenet", "raw", "out", "overwrite=yes"], "overwrite='yes' must be true or false"),
        (["tiny_imagenet", "raw"], "takes <name> <raw dir> <out>"),
    ],
)
def test_bad_arguments_are_refused_naming_the_key(tmp_path: Path, capsys, argv: list[str], expected: str) -> None:
    fake_layouts.tiny_imagenet(tmp_path / "raw")
    argv = [str(tmp_path / a) if a in ("raw", "out") else a for a in argv]
    assert prepare_command(argv) == 2
    assert expected in capsys.readouterr().err


def test_every_torchvision_set_has_its_published_counts() -> None:
    from vitlab.data.prepare import TORCHVISION_COUNTS
    from vitlab.data.torchvision_sets import SPECS

    assert set(TORCHVISION_COUNTS) == set(SPECS)  # a new set gets its counts checked too, never skipped
    assert all(TORCHVISION_COUNTS[name].classes == spec.num_classes for name, spec in SPECS.items())


def test_shards_without_the_data_extra_are_refused_before_any_checking(tmp_path: Path, capsys, monkeypatch) -> None:
    monkeypatch.setitem(sys.modules, "webdataset", None)  # as if `pip install vitlab[data]` had not been run
    err = refused(capsys, "tiny_imagenet", str(tmp_path / "missing"), str(tmp_path / "out"), "format=shards")
    assert "vitlab[data]" in err and "missing" not in err  # refused before the raw folder is even looked at
