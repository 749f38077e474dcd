"""No state outlives what it belongs to: a command's failures, a data set's skip count, timm's op table."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from PIL import Image
from torch.utils.data import DataLoader

from conftest import ROOT
from vitlab.data.corrupt import CheckedImageFolder, skipped_files


def _train_main(monkeypatch: pytest.MonkeyPatch, *argv: str) -> int:
    """`vitlab-train <argv>` in this process; its exit code."""
    from vitlab.cli.train import main

    monkeypatch.setattr(sys, "argv", ["vitlab-train", *argv])
    try:
        main()
    except SystemExit as exc:
        return int(exc.code or 0)
    return 0


def test_a_multirun_that_follows_one_with_failures_is_judged_by_its_own_jobs(tmp_path, monkeypatch) -> None:
    """Failures were a class attribute: every later command in the same process exited 1 after one failure."""
    monkeypatch.setenv("WANDB_MODE", "disabled")
    common = ["tiny=model", "trainer.accelerator=cpu", "trainer.enable_progress_bar=false", "train=false"]
    failed = _train_main(monkeypatch, "-m", *common, "test=false", "optim.lr=-1,-2", f"paths.log_dir={tmp_path / 'a'}")
    assert failed == 1  # both jobs refused (a negative lr): the multirun went on, then said so
    assert len(list((tmp_path / "a").rglob("results.json"))) == 2
    ok = _train_main(monkeypatch, "-m", *common, "test=false", "seed=1,2", f"paths.log_dir={tmp_path / 'b'}")
    assert ok == 0


def _folder(root: Path) -> Path:
    for cls in ("cat", "dog"):
        (root / cls).mkdir(parents=True)
        for i in range(2):
            Image.new("RGB", (4, 4), (i * 60, 0, 0)).save(root / cls / f"{i}.png")
    (root / "dog" / "1.png").write_bytes(b"\x89PNG not really")
    return root


def test_a_spawned_worker_counts_its_skipped_files_into_its_own_data_set(tmp_path) -> None:
    """The count lived in a multiprocessing.Value made at import: a spawned worker re-imports the module and
    counted into a Value of its own, so the training process read 0."""
    folder = CheckedImageFolder(str(_folder(tmp_path / "a")), transform=None, skip_corrupt=True)
    other = CheckedImageFolder(str(_folder(tmp_path / "b")), transform=None, skip_corrupt=True)
    loader = DataLoader(folder, batch_size=None, num_workers=1, multiprocessing_context="spawn")
    assert len(list(loader)) == 4  # the bad file is replaced by the next readable one
    assert skipped_files(folder) == 1 and skipped_files(other) == 0  # a data set's own count
    assert skipped_files(folder, folder) == 1


def test_importing_vitlab_leaves_timm_alone_and_building_a_randaugment_transform_fixes_posterize() -> None:
    code = (
        "from timm.data import auto_augment as a\n"
        "import vitlab.cli.train, vitlab.data.transforms, vitlab.data.imagefolder, vitlab.training.module\n"
        "assert a.NAME_TO_OP['Posterize'] is a.posterize, 'patched at import'\n"
        "from vitlab.data.transforms import build_transform\n"
        "build_transform(8, True, (0.5,) * 3, (0.5,) * 3, {'hflip': 0.5})\n"
        "assert a.NAME_TO_OP['Posterize'] is a.posterize, 'patched without RandAugment'\n"
        "build_transform(8, True, (0.5,) * 3, (0.5,) * 3, {'randaugment': 'rand-m9-n2-inc1'})\n"
        "assert a.NAME_TO_OP['PosterizeIncreasing'] is not a.posterize, 'not patched'\n"
    )
    done = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
