"""No state outlives what it belongs to: a command's failures, a data set's skip count, timm's op table."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from PIL import Image
from torch.utils.data import DataLoader

from conftest import ROOT
from vitlab.data.corrupt import CheckedImageFolder, skipped_files


def test_a_multirun_that_follows_one_with_failures_is_judged_by_its_own_jobs(tmp_path) -> None:
    """Failures were a class attribute: every later command in the same process exited 1 after one failure. Two
    `vitlab-train -m` commands run one after the other in one process (a subprocess: Hydra's multirun leaves its
    global state behind, which other tests must not inherit)."""
    common = ["tiny=model", "trainer.accelerator=cpu", "trainer.enable_progress_bar=false", "train=false", "test=false"]
    failing = ["-m", *common, "optim.lr=-1,-2", f"paths.log_dir={tmp_path / 'a'}"]  # both refused: a negative lr
    passing = ["-m", *common, "seed=1,2", f"paths.log_dir={tmp_path / 'b'}"]
    code = (
        "import sys\n"
        "from vitlab.cli.train import main\n"
        "codes = []\n"
        f"for argv in ({failing!r}, {passing!r}):\n"
        "    sys.argv = ['vitlab-train', *argv]\n"
        "    try:\n"
        "        main()\n"
        "        codes.append(0)\n"
        "    except SystemExit as exc:\n"
        "        codes.append(int(exc.code or 0))\n"
        "print('exit codes', codes)\n"
    )
    env = {**os.environ, "WANDB_MODE": "disabled"}
    done = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, env=env, timeout=300)
    assert "exit codes [1, 0]" in done.stdout, done.stdout[-2000:] + done.stderr[-3000:]
    assert len(list((tmp_path / "a").rglob("results.json"))) == 2  # the multirun went on past the first failure
    assert len(list((tmp_path / "b").rglob("results.json"))) == 2


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
