"""Packed sets (vitlab.data.shards, `vitlab-data`): a pack reads back the source's samples bit for bit, the
manifest says what it holds, other tools read the shards, and every damaged input is one paragraph, exit 2.
Training from shards (equality with the in-memory run, exact resume, DDP coverage) is tests/test_shards_training.py.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import tarfile
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch
from omegaconf import OmegaConf

from conftest import ROOT, compose_cfg
from vitlab.cli.data import main
from vitlab.data.digits import DigitsDataModule
from vitlab.data.fake import FakeDataModule
from vitlab.data.sampling import seeded_rng
from vitlab.data.shards.manifest import MANIFEST, content_sha256
from vitlab.data.shards.module import ShardsDataModule
from vitlab.data.shards.pack import pack
from vitlab.errors import ConfigError, find_config_error

SPLITS = ("train", "val", "test")


def source_of(overrides: list[str]) -> dict:
    return OmegaConf.to_container(compose_cfg(overrides).data, resolve=True)  # type: ignore[return-value]


@pytest.fixture(scope="module")
def digits_pack(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("digits") / "packed"
    pack(
        DigitsDataModule(img_size=32), str(out), source=source_of(["data=digits"]), shard_bytes=200_000, progress=False
    )
    return out


def damaged_copy(packed: Path, tmp_path: Path) -> Path:
    copy = tmp_path / "copy"
    shutil.copytree(packed, copy)
    return copy


@dataclass
class Ran:
    returncode: int
    stdout: str
    stderr: str


@pytest.fixture
def vitlab_data(capsys):
    """`vitlab-data <args>` in-process (its `main`, exit code included); one test runs the console script."""

    def run(*args: str) -> Ran:
        capsys.readouterr()
        with pytest.raises(SystemExit) as exited:
            main(list(args))
        out = capsys.readouterr()
        return Ran(int(exited.value.code or 0), out.out, out.err)

    return run


def test_packed_digits_read_back_bit_identical_with_the_same_augmentation(digits_pack: Path) -> None:
    source, packed = DigitsDataModule(img_size=32), ShardsDataModule(root=str(digits_pack), img_size=32, num_workers=0)
    source.setup()
    packed.setup()
    assert packed.num_classes == 10 and packed.classes == [str(d) for d in range(10)]
    for split in SPLITS:
        a, b = getattr(source, f"{split}_set"), getattr(packed, f"{split}_set")
        assert len(a) == len(b)
        for i in range(0, len(a), 7):
            with seeded_rng(1000 + i):  # the training split draws its random affine map from the sample seed
                xa, ya = a[i]
            with seeded_rng(1000 + i):
                xb, yb = b[i]
            assert ya == yb and torch.equal(xa, xb), (split, i)


def test_manifest_records_splits_counts_sizes_hashes_and_the_source(digits_pack: Path) -> None:
    manifest = json.loads((digits_pack / MANIFEST).read_text())
    assert manifest["format"] == "vitlab-shards" and manifest["version"] == 1
    assert manifest["source"]["_target_"] == "vitlab.data.digits.DigitsDataModule"
    train = manifest["splits"]["train"]
    assert [manifest["splits"][s]["samples"] for s in SPLITS] == [1257, 180, 360]
    assert sum(train["class_counts"]) == 1257 and len(train["class_counts"]) == 10
    assert train["image_size"] == {"min": [8, 8], "median": [8, 8], "max": [8, 8]}
    counts = [shard["samples"] for shard in train["shards"]]
    assert len(counts) > 2 and sum(counts) == 1257 and len(set(counts)) > 1  # several, uneven shards
    for shard in train["shards"]:
        assert (digits_pack / shard["name"]).stat().st_size == shard["bytes"]
    assert manifest["sha256"] == content_sha256(manifest)
    assert ShardsDataModule(root=str(digits_pack), num_workers=0).fingerprint()["sha256"] == manifest["sha256"]


def test_shards_are_webdataset_tars_that_webdataset_and_tar_read(digits_pack: Path) -> None:
    import webdataset as wds

    first = sorted(digits_pack.glob("train-*.tar"))[0]
    with tarfile.open(first) as tar:
        names = tar.getnames()
    assert sorted(names[:2]) == ["000000000.cls", "000000000.png"]
    samples = list(wds.WebDataset(str(first), shardshuffle=False))  # undecoded: the bytes as stored
    packed = ShardsDataModule(root=str(digits_pack), img_size=8, num_workers=0)
    packed.setup()
    assert len(samples) == json.loads((digits_pack / MANIFEST).read_text())["splits"]["train"]["shards"][0]["samples"]
    for i, sample in enumerate(samples):
        assert int(sample["cls"]) == packed.train_set.targets[i]
        assert sample["png"] == packed.train_set.read(i)  # what vitlab reads at the index's offset


def test_cli_pack_check_stats_round_trip_and_non_empty_out_refused(tmp_path: Path, vitlab_data) -> None:
    out = tmp_path / "fake"
    args = ["data=fake", "data.train_size=40", "data.val_size=8", "data.test_size=8", "data.num_classes=4"]
    run = vitlab_data("pack", *args, f"out={out}", "shard_bytes=20000")
    assert run.returncode == 0, run.stderr[-2000:]
    assert "train on it: vitlab-train data=shards" in run.stdout
    check = vitlab_data("check", str(out))
    assert check.returncode == 0 and "ok: every shard" in check.stdout, check.stderr[-2000:]
    stats = vitlab_data("stats", str(out))
    assert stats.returncode == 0 and "train       40 images" in stats.stdout, stats.stdout
    manifest_before = (out / MANIFEST).read_bytes()
    again = vitlab_data("pack", *args, f"out={out}")
    assert again.returncode == 2 and "overwrite=true" in again.stderr and "Traceback" not in again.stderr
    assert (out / MANIFEST).read_bytes() == manifest_before  # nothing there was touched
    config = vitlab_data("stats", "data=fake", "data.train_size=40", "data.num_classes=4")
    assert config.returncode == 0 and "train       40 images" in config.stdout, config.stderr[-2000:]


def test_overwrite_true_repacks_in_place(tmp_path: Path) -> None:
    out = tmp_path / "p"
    module = FakeDataModule(train_size=8, val_size=4, test_size=4, num_classes=2)
    source = source_of(["data=fake"])
    first = pack(module, str(out), source=source, progress=False)
    with pytest.raises(ConfigError, match=r"out=.* is not empty"):
        pack(module, str(out), source=source, progress=False)
    again = pack(module, str(out), source=source, overwrite=True, progress=False)
    assert again["sha256"] == first["sha256"]  # the same samples in the same order: the same set


def _expect_refusal(root: Path, match: str, verify: str = "auto") -> None:
    with pytest.raises(ConfigError, match=match):
        ShardsDataModule(root=str(root), num_workers=0, verify=verify).setup()


def test_a_missing_or_truncated_shard_is_refused_at_setup_and_by_check(
    digits_pack: Path, tmp_path: Path, vitlab_data
) -> None:
    copy = damaged_copy(digits_pack, tmp_path)
    shard = sorted(copy.glob("train-*.tar"))[1]
    data = shard.read_bytes()
    shard.write_bytes(data[: len(data) // 2])
    _expect_refusal(copy, f"shard {shard.name} has {len(data) // 2} bytes where the manifest says {len(data)}", "size")
    run = vitlab_data("check", str(copy))
    assert run.returncode == 2 and shard.name in run.stderr and "truncated" in run.stderr
    shard.unlink()
    _expect_refusal(copy, f"shard {shard.name} is missing", "size")


def test_a_changed_byte_is_a_checksum_mismatch_even_with_the_same_size(
    digits_pack: Path, tmp_path: Path, vitlab_data
) -> None:
    copy = damaged_copy(digits_pack, tmp_path)
    ShardsDataModule(root=str(copy), num_workers=0).setup()  # verified once and remembered (verify=auto)
    shard = sorted(copy.glob("test-*.tar"))[0]
    data = bytearray(shard.read_bytes())
    data[1000] ^= 0xFF
    shard.write_bytes(bytes(data))  # same size, new change time: the remembered check no longer applies
    _expect_refusal(copy, f"shard {shard.name} does not match its manifest")
    run = vitlab_data("check", str(copy))
    assert run.returncode == 2 and f"{shard.name} has another sha256" in run.stderr, run.stderr[-1500:]


def _edit_manifest(copy: Path, edit, rehash: bool = True) -> None:
    manifest = json.loads((copy / MANIFEST).read_text())
    edit(manifest)
    if rehash:
        manifest["sha256"] = content_sha256(manifest)
    (copy / MANIFEST).write_text(json.dumps(manifest))


def test_another_manifest_version_an_empty_split_and_an_edited_manifest_are_refused(
    digits_pack: Path, tmp_path: Path
) -> None:
    copy = damaged_copy(digits_pack, tmp_path)
    _edit_manifest(copy, lambda m: m.update(version=2))
    _expect_refusal(copy, "format version 2; this vitlab reads version 1")
    copy = damaged_copy(digits_pack, tmp_path / "b")
    _edit_manifest(copy, lambda m: m["splits"]["val"].update(samples=0))
    _expect_refusal(copy, "the 'val' split is empty")
    copy = damaged_copy(digits_pack, tmp_path / "c")
    _edit_manifest(copy, lambda m: m["splits"]["val"]["shards"][0].update(bytes=1), rehash=False)
    _expect_refusal(copy, "was edited after packing")


def test_a_label_outside_the_classes_is_refused(digits_pack: Path, tmp_path: Path) -> None:
    copy = damaged_copy(digits_pack, tmp_path)
    _edit_manifest(copy, lambda m: m.update(classes=m["classes"][:5]))  # labels 5..9 now lie outside
    _expect_refusal(copy, r"has label \d, outside the 5 classes \(allowed: 0..4\)")


def test_a_packed_set_at_a_url_is_copied_into_the_cache_and_checked(digits_pack: Path, tmp_path: Path) -> None:
    module = FakeDataModule(train_size=8, val_size=4, test_size=4, num_classes=2)
    url = "memory://vitlab-test/fake"
    manifest = pack(module, url, source=source_of(["data=fake"]), progress=False)
    packed = ShardsDataModule(root=url, img_size=32, num_workers=0, cache_dir=str(tmp_path / "cache"))
    packed.setup()
    assert packed.fingerprint()["sha256"] == manifest["sha256"] and len(packed.train_set) == 8
    assert sorted(p.name for p in (tmp_path / "cache").rglob("*.tar")) == [
        "test-000000.tar",
        "train-000000.tar",
        "val-000000.tar",
    ]


def test_a_url_whose_filesystem_package_is_missing_names_the_install(monkeypatch) -> None:
    import fsspec

    def missing(protocol, **kwargs):
        raise ImportError("Install s3fs to access S3")

    monkeypatch.setattr(fsspec, "filesystem", missing)
    with pytest.raises(ConfigError, match=r"s3:// needs an optional package .*pip install s3fs"):
        ShardsDataModule(root="s3://bucket/packed", num_workers=0)


def test_data_shards_takes_img_size_and_batch_size_from_the_manifest(digits_pack: Path) -> None:
    import vitlab.cli.resolvers  # noqa: F401  (the ${vitlab.packed:...} resolver of configs/data/shards.yaml)

    cfg = compose_cfg(["data=shards", f"data.root={digits_pack}"])
    assert cfg.data.img_size == 32 and cfg.data.batch_size == 64
    assert compose_cfg(["data=shards", f"data.root={digits_pack}", "data.img_size=48"]).data.img_size == 48
    with pytest.raises(Exception) as missing:  # OmegaConf wraps the resolver's error
        OmegaConf.to_container(compose_cfg(["data=shards"]).data, resolve=True)
    assert "data.root is not set" in str(find_config_error(missing.value))
    with pytest.raises(ConfigError, match=r"data\.source has keys"):
        ShardsDataModule(root=str(digits_pack), source={"classes": [1, 2]})


@pytest.mark.slow  # a process: the exit code and stderr of the real console entry point
def test_the_console_script_exits_2_with_one_paragraph(tmp_path: Path) -> None:
    run = subprocess.run(
        [sys.executable, "-m", "vitlab.cli.data", "check", str(tmp_path)], cwd=ROOT, capture_output=True, text=True
    )
    assert run.returncode == 2 and "no manifest.json there" in run.stderr and "Traceback" not in run.stderr


@pytest.mark.slow  # trains in-process (a few seconds)
def test_a_run_on_shards_records_the_manifest_hash_and_refuses_a_resume_on_a_repacked_set(
    tmp_path: Path, capsys
) -> None:
    from omegaconf import open_dict

    import vitlab.cli.resolvers  # noqa: F401  (configs/data/shards.yaml's ${vitlab.packed:...})
    from conftest import TINY
    from test_data_fingerprint import _train_in_process
    from vitlab.cli import train as train_cli
    from vitlab.compose import compose_config

    packed, source = tmp_path / "packed", source_of(["data=fake"])
    manifest = pack(FakeDataModule(train_size=8, val_size=4, test_size=4, num_classes=2), str(packed), source=source)
    args = [*TINY, "data=shards", f"data.root={packed}", "data.img_size=16", "data.batch_size=4"]
    args += ["data.num_workers=0", "+trainer.limit_train_batches=1", "test=false"]
    run = tmp_path / "run"
    record = _train_in_process(run, args)
    assert record["status"] == "ok" and record["data/sha256"] == manifest["sha256"] and record["data/samples"] == 16

    results = (run / "results.json").read_text().replace('"status": "ok"', '"status": "interrupted"')
    (run / "results.json").write_text(results)
    module = FakeDataModule(train_size=12, val_size=4, test_size=4, num_classes=2)
    pack(module, str(packed), source=source, overwrite=True, progress=False)  # another set at the same place
    cfg = compose_config("train", args)
    with open_dict(cfg):
        cfg.paths.output_dir = str(run)
    with pytest.raises(SystemExit) as exit_info:
        train_cli.train_job(cfg, [])
    assert exit_info.value.code == 2 and f"trained on data with sha256 {manifest['sha256']}" in capsys.readouterr().err


def test_torchvision_file_sets_are_packed_with_their_original_bytes(tmp_path: Path) -> None:
    """Flowers-102 and DTD list their files as `_image_files`, Oxford Pets as `_images`, labels as `_labels`."""
    from PIL import Image
    from torch.utils.data import Dataset, Subset

    from vitlab.data.shards.encode import split_samples

    paths = []
    for i in range(3):
        paths.append(tmp_path / f"{i}.jpg")
        Image.new("RGB", (5 + i, 4), (i * 40, 0, 0)).save(paths[-1], quality=90)

    class Pets(Dataset):
        def __init__(self) -> None:
            self._images, self._labels = paths, [2, 0, 1]

    packed = list(split_samples(Subset(Pets(), [2, 0])))
    assert [(data, ext, label, size) for data, ext, label, size in packed] == [
        (paths[2].read_bytes(), "jpg", 1, (7, 4)),
        (paths[0].read_bytes(), "jpg", 2, (5, 4)),
    ]
