"""VTAB-1k: the data module on a miniature folder in the standard layout, the folder checker, the means."""

from __future__ import annotations

import logging
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from conftest import ROOT, TINY, run_cli
from vitlab.data.vtab1k import VTAB1kDataModule
from vitlab.data.vtab_check import check_root, format_checks
from vitlab.data.vtab_tasks import GROUPS, NUM_CLASSES, REFERENCE_ROWS, TASKS, vtab_means
from vitlab.errors import ConfigError

COLOURS = [(255, 0, 128), (0, 255, 0), (0, 0, 255), (200, 200, 0)]  # solid colour per class


def make_task(root: Path, task: str, classes: int, per_class: tuple[int, int, int] = (2, 1, 2)) -> None:
    """`<root>/<task>/images/*.png` (20x12 px, class colour) and the four list files; per_class gives
    the images per class in train800, val200 and test; train800val200 = train800 + val200."""
    (root / task / "images").mkdir(parents=True)
    lists: dict[str, list[str]] = {"train800": [], "val200": [], "test": []}
    for label in range(classes):
        for split, n in zip(lists, per_class, strict=True):
            for i in range(n):
                name = f"images/{split}_{label}_{i}.png"
                Image.new("RGB", (20, 12), COLOURS[label % len(COLOURS)]).save(root / task / name)
                lists[split].append(f"{name} {label}")
    lists["train800val200"] = lists["train800"] + lists["val200"]
    for split, lines in lists.items():
        (root / task / f"{split}.txt").write_text("\n".join(lines) + "\n")


@pytest.fixture
def vtab(tmp_path) -> Path:
    make_task(tmp_path, "kitti", classes=4)  # all 4 classes of kitti
    make_task(tmp_path, "dtd", classes=3)  # 3 of dtd's 47: a miniature
    return tmp_path


def dm(root: Path, **kwargs) -> VTAB1kDataModule:
    return VTAB1kDataModule(root=str(root), **{"task": "kitti", "img_size": 32, "num_workers": 0, **kwargs})


def test_protocols_read_their_list_files(vtab) -> None:
    tune = dm(vtab)
    assert tune.num_classes == 4 and tune.split_files() == ("train800.txt", "val200.txt", "val200.txt")
    assert tune.split_sizes() == {"train": 8, "val": 4, "test": 4}
    assert tune.val_set.samples == tune.test_set.samples  # tune never reads test.txt
    final = dm(vtab, protocol="final")
    assert final.split_sizes() == {"train": 12, "val": 8, "test": 8}
    assert final.val_set.samples == final.test_set.samples  # FacT: validation is test.txt
    assert all("/images/test_" in str(p) for p, _ in final.test_set.samples)
    seen = dm(vtab, protocol="final", final_val="val200")
    assert seen.split_files() == ("train800val200.txt", "val200.txt", "test.txt")
    assert sorted(y for _, y in final.train_set.samples) == [0, 0, 0, 1, 1, 1, 2, 2, 2, 3, 3, 3]


@pytest.mark.parametrize(
    ("normalize", "expected"),
    [
        ("none", [1.0, 0.0, 128 / 255]),
        ("imagenet", [(1 - 0.485) / 0.229, (0 - 0.456) / 0.224, (128 / 255 - 0.406) / 0.225]),
        ("inception", [1.0, -1.0, 2 * 128 / 255 - 1]),
    ],
)
def test_images_are_square_resized_and_normalised(vtab, normalize: str, expected: list[float]) -> None:
    module = dm(vtab, normalize=normalize)
    module.setup()
    x, y = module.train_set[0]  # a 20x12 image of class 0, colour (255, 0, 128)
    assert y == 0 and x.shape == (3, 32, 32)  # squashed to a square, not cropped
    assert np.allclose(x.mean(dim=(1, 2)).numpy(), expected, atol=1e-3)
    assert np.allclose(x.std(dim=(1, 2)).numpy(), 0, atol=1e-3)  # bicubic keeps a solid image solid


def test_grey_images_become_rgb_and_training_is_not_augmented(vtab) -> None:
    Image.new("L", (9, 30), 77).save(vtab / "kitti" / "images" / "train800_0_0.png")
    module = dm(vtab)
    module.setup()
    a, _ = module.train_set[0]
    b, _ = module.train_set[0]
    assert a.shape == (3, 32, 32) and (a == b).all()
    assert np.allclose(a[0].numpy(), a[1].numpy() * 0.224 / 0.229 + (0.456 - 0.485) / 0.229, atol=1e-4)


def test_class_count_comes_from_the_labels(vtab, caplog) -> None:
    with caplog.at_level(logging.WARNING):
        assert dm(vtab, task="dtd").num_classes == 3
    assert "3 classes, the task has 47" in caplog.text
    with (vtab / "kitti" / "test.txt").open("a") as f:
        f.write("images/test_0_0.png 4\n")  # kitti has 4 classes: label 4 is impossible
    with pytest.raises(ConfigError, match=r"labels up to 4, but the task has 4 classes.*check_vtab.py"):
        dm(vtab)


@pytest.mark.parametrize(
    ("kwargs", "fragments"),
    [
        ({"task": "cifar100"}, ["data.task='cifar100'", "natural: cifar, caltech101", "smallnorb_ele"]),
        ({"protocol": "test"}, ["data.protocol='test'", "'tune', 'final'"]),
        ({"normalize": "clip"}, ["data.normalize='clip'", "'imagenet', 'inception', 'none'"]),
        ({"final_val": "train"}, ["data.final_val='train'", "'test', 'val200'"]),
        ({"task": "eurosat"}, ["no folder 'eurosat'", "NOAH/FacT", "scripts/check_vtab.py"]),
    ],
)
def test_bad_settings_name_the_key_and_the_choices(vtab, kwargs, fragments) -> None:
    with pytest.raises(ConfigError) as info:
        dm(vtab, **kwargs)
    for fragment in fragments:
        assert fragment in str(info.value)


def test_missing_or_broken_files_are_reported_clearly(vtab) -> None:
    with pytest.raises(ConfigError, match=r"data.root=.*nowhere does not exist.*NOAH/FacT.*check_vtab.py"):
        dm(vtab / "nowhere")
    (vtab / "dtd" / "test.txt").unlink()
    with pytest.raises(ConfigError, match=r"dtd/test.txt is missing.*train800.txt, val200.txt"):
        dm(vtab, task="dtd")
    (vtab / "kitti" / "val200.txt").write_text("images/val200_0_0.png 0\nimages/val200_1_0.png one\n")
    with pytest.raises(ConfigError, match=r"val200.txt line 2: 'images/val200_1_0.png one' is not"):
        dm(vtab)
    (vtab / "kitti" / "val200.txt").write_text("images/val200_0_0.png 0\nimages/gone.png 1\n")
    with pytest.raises(ConfigError, match=r"1 images listed in kitti/val200.txt are missing.*gone.png"):
        dm(vtab).setup()


def _check(root: Path, **kwargs):
    (result,) = check_root(root, ["kitti"], **kwargs)
    return result


def test_checker_passes_a_good_folder_and_counts_lines(vtab) -> None:
    checks = check_root(vtab, ["kitti", "dtd"], expected_counts=False, open_images=True)
    assert all(c.ok for c in checks), format_checks(checks)
    assert checks[0].counts == {"train800.txt": 8, "val200.txt": 4, "train800val200.txt": 12, "test.txt": 8}
    assert checks[1].num_labels == 3
    strict = _check(vtab)  # the real 800/200/1000 counts
    assert "train800.txt has 8 lines, expected 800" in strict.problems


def test_checker_reports_each_kind_of_failure(vtab) -> None:
    task = vtab / "kitti"
    (task / "images" / "test_1_1.png").unlink()
    assert _check(vtab, expected_counts=False).problems == ["1 listed images missing (first: images/test_1_1.png)"]
    make_task(vtab / "b", "kitti", classes=4)
    lines = (vtab / "b" / "kitti" / "train800val200.txt").read_text().splitlines()
    (vtab / "b" / "kitti" / "train800val200.txt").write_text("\n".join(lines[:-1]) + "\n")
    (problem,) = _check(vtab / "b", expected_counts=False).problems
    assert problem.startswith("train800 + val200 != train800val200 (0 entries only in train800val200, 1 only")
    make_task(vtab / "c", "kitti", classes=4)
    with (vtab / "c" / "kitti" / "test.txt").open("a") as f:
        f.write("images/test_0_0.png 7\n")
    (problem,) = _check(vtab / "c", expected_counts=False).problems
    assert problem == "labels [7] out of range: kitti has 4 classes (0..3)"
    make_task(vtab / "d", "kitti", classes=4)
    (vtab / "d" / "kitti" / "images" / "test_0_0.png").write_bytes(b"not a png")
    assert _check(vtab / "d", expected_counts=False).ok  # only decoded with --open
    assert "1 images do not open" in _check(vtab / "d", expected_counts=False, open_images=True).problems[0]
    unknown, absent = check_root(vtab, ["cifar100", "svhn"])
    assert "unknown task" in unknown.problems[0] and "folder" in absent.problems[0]


def test_check_script_prints_a_table_and_sets_the_exit_code(vtab) -> None:
    script = [sys.executable, str(ROOT / "scripts" / "check_vtab.py"), str(vtab)]
    good = subprocess.run([*script, "--tasks", "kitti", "dtd", "--no-counts"], capture_output=True, text=True)
    assert good.returncode == 0, good.stdout + good.stderr
    assert "kitti" in good.stdout and "✓" in good.stdout and "2/2 tasks ok" in good.stdout
    bad = subprocess.run([*script, "--tasks", "kitti"], capture_output=True, text=True)
    assert bad.returncode == 1 and "✗ train800.txt has 8 lines, expected 800" in bad.stdout


@pytest.mark.parametrize(
    ("method", "natural", "specialized", "structured", "group_mean"),
    [
        ("full_ft", 75.89, 83.38, 47.64, 68.97),
        ("linear", 68.93, 77.15, 26.85, 57.64),
        ("vpt_deep", 78.49, 82.42, 55.00, 71.97),
        ("lora", 79.49, 84.55, 59.78, 74.60),
        ("adaptformer", 80.56, 84.88, 58.83, 74.75),
        ("ssf", 81.57, 86.55, 58.96, 75.69),
        ("noah", 80.26, 84.88, 61.30, 75.48),
        ("fact", 80.64, 85.30, 60.71, 75.55),
    ],
)
def test_vtab_means_reproduce_the_published_averages(method, natural, specialized, structured, group_mean) -> None:
    """docs/papers/ode.md: group means derived from the V-PETL Bench rows; flat means as that README prints."""
    row = REFERENCE_ROWS[method]
    means = vtab_means(row.by_task())
    expected = {"natural": natural, "specialized": specialized, "structured": structured, "group_mean": group_mean}
    for key, value in expected.items():
        assert means[key] == pytest.approx(value, abs=0.01), key
    assert means["flat_mean"] == pytest.approx(row.flat_mean, abs=0.01) and means["n_tasks"] == 19


def test_vtab_means_need_every_task_unless_partial() -> None:
    assert len(TASKS) == len(NUM_CLASSES) == sum(len(t) for t in GROUPS.values()) == 19
    acc = REFERENCE_ROWS["ssf"].by_task()
    del acc["dmlab"], acc["kitti"]
    with pytest.raises(ValueError, match=r"2 of the 19 VTAB-1k tasks are missing: dmlab, kitti.*partial=True"):
        vtab_means(acc)
    means = vtab_means(acc, partial=True)
    assert means["n_tasks"] == 17 and means["natural"] == pytest.approx(81.57, abs=0.01)
    assert means["structured"] == pytest.approx((75.9 + 62.3 + 77.3 + 54.9 + 29.5 + 37.9) / 6)
    assert np.isnan(vtab_means({"cifar": 70.0}, partial=True)["group_mean"])
    with pytest.raises(ValueError, match="unknown VTAB-1k tasks"):
        vtab_means({**REFERENCE_ROWS["ssf"].by_task(), "cifar100": 1.0})


@pytest.mark.slow
def test_vitlab_train_runs_the_final_protocol_on_a_miniature(vtab, tmp_path) -> None:
    data = ["data=vtab1k", f"data.root={vtab}", "data.task=kitti", "data.protocol=final", "data.batch_size=4"]
    run = run_cli(
        "train", [*TINY, *data, "data.num_workers=0", "data.pin_memory=false", "test_checkpoint=last"], tmp_path
    )
    assert run.returncode == 0, run.stderr[-3000:]
    (result,) = run.results()
    assert result["status"] == "ok"
    assert result["params/trainable"] - result["params/trainable_no_head"] == 32 * 4 + 4  # 4 kitti classes
    assert result["test/acc"] == result["val/acc"]  # final: validation is test.txt, the last epoch is tested
