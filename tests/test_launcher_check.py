"""A SLURM multirun is sized by numbers: trainer.devices=-1/auto is refused before anything is submitted."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from vitlab.cli.launcher_check import check_launcher
from vitlab.cli.resolvers import slurm_devices
from vitlab.cli.show_hydra import split_config_dirs
from vitlab.compose import compose_config
from vitlab.errors import ConfigError

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize("devices", [-1, "auto", 0, "0", True])
def test_devices_that_cannot_size_a_slurm_job_are_refused(devices: object) -> None:
    with pytest.raises(ConfigError, match=r"trainer\.devices=.* cannot size a SLURM job"):
        slurm_devices(devices)


def test_the_slurm_example_resolves_task_and_gpu_counts_from_a_number(monkeypatch) -> None:
    monkeypatch.setattr("vitlab.cli.launcher_check.shutil.which", lambda tool: f"/usr/bin/{tool}")  # SLURM or not
    cfg = compose_config("train", ["local=slurm_example", "trainer=ddp", "trainer.devices=4"], return_hydra_config=True)
    assert (cfg.hydra.launcher.tasks_per_node, cfg.hydra.launcher.gpus_per_node) == (4, 4)
    check_launcher("train", ["-m", "local=slurm_example", "trainer=ddp", "trainer.devices=4"])


def test_check_launcher_refuses_minus_one_and_finds_a_users_local_config(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="cannot size a SLURM job"):
        check_launcher("train", ["-m", "local=slurm_example", "trainer=ddp"])
    check_launcher("train", ["local=slurm_example", "trainer=ddp"])  # no multirun: no launcher to size
    mine = tmp_path / "configs" / "local"
    mine.mkdir(parents=True)
    (mine / "default.yaml").write_text((ROOT / "configs" / "local" / "slurm_example.yaml").read_text())
    with pytest.raises(ConfigError, match="cannot size a SLURM job"):  # found through --config-dir
        check_launcher("train", ["--config-dir", str(tmp_path / "configs"), "-m", "trainer=ddp"])


def test_split_config_dirs() -> None:
    argv = ["-cd", "a", "--config-dir=b", "-m", "--config-name", "eval", "seed=1"]
    assert split_config_dirs(argv) == (["a", "b"], ["-m", "seed=1"])


def test_vitlab_train_says_it_in_one_paragraph_and_exits_2(tmp_path: Path) -> None:
    args = ["-m", "local=slurm_example", "trainer=ddp", f"paths.log_dir={tmp_path / 'out'}"]
    run = subprocess.run([sys.executable, "-m", "vitlab.cli.train", *args], capture_output=True, text=True)
    assert run.returncode == 2, run.stderr
    assert "cannot size a SLURM job" in run.stderr and "Traceback" not in run.stderr
    assert not (tmp_path / "out").exists()


def test_cfg_hydra_resolve_composes_a_users_config_dir(tmp_path: Path) -> None:
    """`--cfg hydra --resolve` (composed by vitlab, not Hydra) finds a user's experiment through --config-dir."""
    example = ROOT / "examples" / "my_project" / "configs"
    args = ["--config-dir", str(example), "experiment=rope_vit48", "--cfg", "hydra", "--resolve"]
    run = subprocess.run(
        [sys.executable, "-m", "vitlab.cli.train", *args], capture_output=True, text=True, cwd=tmp_path
    )
    assert run.returncode == 0, run.stderr
    assert f"file://{example}" in run.stdout and "${" not in run.stdout
