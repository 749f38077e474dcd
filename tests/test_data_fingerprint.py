"""Which data a run read (docs/runs.md): the data hash, its folder cache, where a run records it, and the
refusal to continue a run on data whose hash changed."""

from __future__ import annotations

import json
import logging
import os
import stat
import time
from pathlib import Path

import pytest
from omegaconf import open_dict

from conftest import TINY
from helpers import fake_layouts
from vitlab.data import fingerprint as fp_module
from vitlab.data.digits import DigitsDataModule
from vitlab.data.fake import FakeDataModule
from vitlab.data.imagefolder import ImageFolderDataModule
from vitlab.data.tiny_imagenet import TinyImageNetDataModule
from vitlab.data.vtab1k import VTAB1kDataModule
from vitlab.errors import ConfigError


def folder_hash(root: Path, **kwargs) -> str:
    return ImageFolderDataModule(str(root), num_workers=0, img_size=16, **kwargs).fingerprint()["sha256"]


@pytest.fixture
def folder(tmp_path: Path) -> Path:
    fake_layouts.image_folder(tmp_path, ("cat", "dog", "eel"), 10, size=8)
    return tmp_path


def test_in_memory_sets_are_stable_and_follow_their_selection() -> None:
    digits = DigitsDataModule().fingerprint()
    assert digits == DigitsDataModule().fingerprint() and digits["basis"] == "arrays" and digits["samples"] == 1797
    assert DigitsDataModule(classes=[0, 1, 2]).fingerprint()["sha256"] != digits["sha256"]  # the class subset
    assert DigitsDataModule(split_seed=1).fingerprint()["sha256"] != digits["sha256"]  # the split
    fake = FakeDataModule().fingerprint()
    assert fake == FakeDataModule().fingerprint() and fake["basis"] == "generator"
    assert FakeDataModule(train_size=63).fingerprint()["sha256"] != fake["sha256"]


def test_moving_a_sample_across_a_split_boundary_changes_the_hash(tmp_path: Path) -> None:
    from torch.utils.data import Subset

    from vitlab.data.tiny_imagenet import LabelledFiles

    for i in range(6):
        (tmp_path / f"{i}.png").write_bytes(b"x" * i)
    data = LabelledFiles([(tmp_path / f"{i}.png", 0) for i in range(6)], transform=None)  # per-file records
    split = {"train": Subset(data, [0, 1, 2]), "val": Subset(data, [3, 4, 5])}
    moved = {"train": Subset(data, [0, 1]), "val": Subset(data, [2, 3, 4, 5])}  # the same samples in order
    assert fp_module.compute(split, {}, tmp_path)["sha256"] != fp_module.compute(moved, {}, tmp_path)["sha256"]


def test_a_folder_hash_is_stable_and_sees_size_name_label_split_and_classes(folder: Path) -> None:
    first = ImageFolderDataModule(str(folder), num_workers=0, img_size=16).fingerprint()
    assert first["basis"] == "files" and first["samples"] == 60
    (folder / fp_module.CACHE_FILE).unlink()  # a second computation from scratch, by another instance
    assert folder_hash(folder) == first["sha256"]
    assert folder_hash(folder, split_seed=1) != first["sha256"]  # another held-out validation split
    image = folder / "train" / "cat" / "0.png"
    seen = {first["sha256"]}
    image.write_bytes(image.read_bytes() + b"\0")  # same name, one byte more
    seen.add(folder_hash(folder))
    time.sleep(0.02)  # past a coarse file-system clock tick: the rename's ctime is newer than the write's
    image.rename(image.with_name("00.png"))  # renamed (still first of its class: only the name differs)
    seen.add(folder_hash(folder))
    (folder / "train" / "cat" / "00.png").rename(folder / "train" / "dog" / "00.png")  # another label
    seen.add(folder_hash(folder))
    assert len(seen) == 4, "a resized, a renamed and a relabelled file each give another hash"


def test_the_other_folder_layouts_see_their_split_and_class_files(tmp_path: Path) -> None:
    fake_layouts.tiny_imagenet(tmp_path / "tiny", per_class=10)
    tiny = TinyImageNetDataModule(str(tmp_path / "tiny"), num_workers=0, img_size=16).fingerprint()
    assert tiny["samples"] == 36 and tiny["basis"] == "files"
    (tmp_path / "tiny" / "wnids.txt").write_text("n02\nn01\nn03\n")  # the label order: every label moves
    assert TinyImageNetDataModule(str(tmp_path / "tiny"), num_workers=0, img_size=16).fingerprint() != tiny
    fake_layouts.vtab_task(tmp_path / "vtab" / "cifar")
    tune = VTAB1kDataModule(str(tmp_path / "vtab"), num_workers=0, img_size=16).fingerprint()
    final = VTAB1kDataModule(str(tmp_path / "vtab"), protocol="final", num_workers=0, img_size=16).fingerprint()
    assert tune["sha256"] != final["sha256"] and tune["samples"] == 6 + 3 + 3
    lines = (tmp_path / "vtab" / "cifar" / "train800.txt").read_text().replace(" 0\n", " 1\n", 1)
    (tmp_path / "vtab" / "cifar" / "train800.txt").write_text(lines)  # one label edited in place
    assert VTAB1kDataModule(str(tmp_path / "vtab"), num_workers=0, img_size=16).fingerprint() != tune


def test_the_cache_is_used_and_invalidated_when_the_folder_changes(folder: Path, monkeypatch) -> None:
    computed = []
    real = fp_module.compute
    monkeypatch.setattr(fp_module, "compute", lambda *a, **k: computed.append(1) or real(*a, **k))
    first = folder_hash(folder)
    assert folder_hash(folder) == first and len(computed) == 1, "the second module reads the cache"
    cache = json.loads((folder / fp_module.CACHE_FILE).read_text())
    assert [entry["result"]["sha256"] for entry in cache.values()] == [first]
    image = folder / "test" / "eel" / "0.png"
    image.write_bytes(image.read_bytes() + b"\0")  # the same files and splits, one of them a byte longer
    second = folder_hash(folder)
    assert second != first and len(computed) == 2, "a rewritten file invalidates the cache"
    time.sleep(0.02)  # past a coarse file-system clock tick: the rename's ctime is newer than the write's
    image.rename(image.with_name("00.png"))  # the same count and total size: the rename's ctime tells
    third = folder_hash(folder)
    assert third not in (first, second) and len(computed) == 3, "a renamed file invalidates the cache"
    image.with_name("00.png").unlink()
    assert folder_hash(folder) not in (first, second, third) and len(computed) == 4, "so does a deleted one"
    assert folder_hash(folder, split_seed=3) and len(computed) == 5, "another split is another cache entry"


def test_a_read_only_folder_is_fingerprinted_without_a_cache(folder: Path, monkeypatch) -> None:
    expected = folder_hash(folder)
    (folder / fp_module.CACHE_FILE).unlink()
    real_write = Path.write_text

    def read_only(path: Path, *args, **kwargs):  # as a read-only mount answers, also to root (who ignores modes)
        if folder in path.parents:
            raise PermissionError(13, "Read-only file system", str(path))
        return real_write(path, *args, **kwargs)

    monkeypatch.setattr(Path, "write_text", read_only)
    os.chmod(folder, stat.S_IRUSR | stat.S_IXUSR)
    try:
        assert folder_hash(folder) == expected
        assert sorted(p.name for p in folder.iterdir()) == ["test", "train"]  # no cache, no temporary file
    finally:
        os.chmod(folder, stat.S_IRWXU)


def _train_in_process(run_dir: Path, args: list[str]) -> dict:
    from vitlab.cli import train as train_cli
    from vitlab.cli.in_place import apply_attempt, open_attempt
    from vitlab.cli.runner import run_task
    from vitlab.compose import compose_config

    cfg = compose_config("train", args)
    with open_dict(cfg):
        cfg.paths.output_dir = str(run_dir)
    attempt = open_attempt(run_dir, [])  # the overrides train_job sees outside a Hydra job (task_overrides)
    apply_attempt(cfg, attempt)
    run_task(cfg, lambda c, r: train_cli.train(c, r, attempt=attempt), attempt)
    return json.loads((run_dir / "results.json").read_text())


@pytest.mark.slow  # trains end to end (in-process, a few seconds)
def test_a_run_records_its_data_and_a_resume_on_changed_data_is_refused(tmp_path: Path, caplog, capsys) -> None:
    from vitlab.cli import train as train_cli
    from vitlab.compose import compose_config

    data = tmp_path / "data"
    fake_layouts.image_folder(data, ("cat", "dog"), 4, ("train", "val", "test"), size=8)
    args = [*TINY, "data=imagefolder", f"data.root={data}", "data.img_size=32", "data.batch_size=4"]
    args += ["data.num_workers=0", "+trainer.limit_train_batches=1", "test=false"]
    run = tmp_path / "run"
    record = _train_in_process(run, args)
    expected = ImageFolderDataModule(str(data), num_workers=0, img_size=32).fingerprint()
    assert record["status"] == "ok" and record["data/sha256"] == expected["sha256"] and record["data/samples"] == 24
    state = json.loads((run / "run.json").read_text())
    assert state["attempts"][-1]["data"] == expected
    assert "data/sha256" in (run / "csv" / "hparams.yaml").read_text()  # the loggers' config (W&B's too)

    # the run is continued (in place) after a file of its data grew: refused before anything is written
    results = (run / "results.json").read_text().replace('"status": "ok"', '"status": "interrupted"')
    (run / "results.json").write_text(results)
    before = {p.name: p.read_bytes() for p in (run / "results.json", run / "run.json")}
    image = data / "train" / "cat" / "0.png"
    image.write_bytes(image.read_bytes() + b"\0")
    cfg = compose_config("train", args)
    with open_dict(cfg):
        cfg.paths.output_dir = str(run)
    with pytest.raises(SystemExit) as exit_info:
        train_cli.train_job(cfg, [])
    assert exit_info.value.code == 2 and "trained on data with sha256" in capsys.readouterr().err
    assert {p.name: p.read_bytes() for p in (run / "results.json", run / "run.json")} == before
    with pytest.raises(ConfigError, match=rf"{expected['sha256']}.*data.root={data}.*Restore the data"):
        _check(cfg)
    with open_dict(cfg):  # a new run warm-started from that run's checkpoint: refused alike
        cfg.paths.output_dir, cfg.ckpt_path = str(tmp_path / "new"), str(run / "checkpoints" / "last.ckpt")
    with pytest.raises(ConfigError, match=r"ckpt_path=.*last.ckpt trained on data with sha256"):
        _check(cfg)

    (run / "results.json").write_text(results.replace('"status": "interrupted"', '"status": "ok"'))
    with open_dict(cfg):  # a finished run is never continued (open_attempt skips it): its data is not checked
        cfg.paths.output_dir, cfg.ckpt_path = str(run), None
    _check(cfg)
    (run / "results.json").write_text(results)

    # a run from before data hashes: one warning line, then it continues
    old = json.loads((run / "run.json").read_text())
    for attempt in old["attempts"]:
        attempt.pop("data")
    (run / "run.json").write_text(json.dumps(old))
    with caplog.at_level(logging.WARNING, logger="vitlab"):
        _check(cfg)
    assert [r.getMessage() for r in caplog.records if "recorded no data hash" in r.getMessage()]


def _check(cfg) -> None:
    from vitlab.cli.resume import check_same_data

    check_same_data(cfg)


def test_the_reproduce_csv_names_each_cells_data(tmp_path: Path) -> None:
    import csv
    import io

    from test_reproduce_tables import DEMO, write_result
    from vitlab.reproduce import collect, load_table, render_csv

    path = tmp_path / "configs/paper/demo/t1.yaml"  # the table's name comes from its path
    path.parent.mkdir(parents=True)
    path.write_text(DEMO)
    spec = load_table(path)
    for job in spec.jobs("mini"):
        if job.row == "good":  # set b's seed 2 read another copy of the data
            sha = "b2" if job.dataset == "b" and job.seed == 2 else job.dataset
            write_result(job.results_path(tmp_path / "runs"), **{"test/acc": 0.8, "data/sha256": sha})
    rows = list(csv.DictReader(io.StringIO(render_csv(collect(spec, "mini", tmp_path / "runs"), spec))))
    good = {r["column"]: r["data_sha256"] for r in rows if r["row"] == "good"}
    assert good["a"] == "a" and good["b"] == "b b2", good
    assert {r["data_sha256"] for r in rows if r["row"] == "flaky"} == {""}  # no finished run: no hash


def test_a_torchvision_set_hashes_the_files_of_its_folder(tmp_path: Path, monkeypatch) -> None:
    from torch.utils.data import Dataset

    from vitlab.data.torchvision_sets import TorchvisionDataModule

    class Batches(Dataset):  # what CIFAR10 exposes without decoding: its labels (`targets`)
        def __init__(self, n: int) -> None:
            self.targets = [i % 10 for i in range(n)]

        def __len__(self) -> int:
            return len(self.targets)

    folder = tmp_path / "cifar-10-batches-py"  # the spec's folder: every file under it is hashed
    folder.mkdir()
    (folder / "data_batch_1").write_bytes(b"x" * 100)
    monkeypatch.setattr(TorchvisionDataModule, "_build", lambda self: (Batches(40), Batches(10), Batches(20)))

    def fingerprint() -> dict:
        return TorchvisionDataModule("cifar10", str(tmp_path), num_workers=0).fingerprint()

    first = fingerprint()
    assert first["basis"] == "files" and first["samples"] == 70 and fingerprint() == first
    (folder / "data_batch_1").write_bytes(b"x" * 101)
    assert fingerprint()["sha256"] != first["sha256"]
