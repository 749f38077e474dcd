"""vitlab installs and runs from a wheel outside any checkout, with the configs the wheel ships.

The wheel is built from this checkout and installed without `-e` into a fresh venv in a temporary directory.
The venv borrows the test environment's *dependencies* through a path entry (a fresh torch install costs
minutes), but not its editable vitlab: `.pth` files of a borrowed directory are not processed, so `vitlab`
can only come from the wheel — which the test checks before running anything.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import sysconfig
from pathlib import Path

import pytest
import tomllib
from setuptools import find_packages

ROOT = Path(__file__).resolve().parents[1]
EXAMPLE = ROOT / "examples" / "my_project" / "configs"


def test_every_package_is_in_the_wheel_list() -> None:
    listed = set(tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"])
    plugins = {"hydra_plugins", *(f"hydra_plugins.{p}" for p in find_packages(str(ROOT / "src" / "hydra_plugins")))}
    assert listed == {*find_packages(str(ROOT / "src")), "vitlab.configs", *plugins}


@pytest.fixture(scope="module")
def wheel_venv(tmp_path_factory: pytest.TempPathFactory) -> Path:
    work = tmp_path_factory.mktemp("wheel")
    build = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w", str(work), str(ROOT)],
        capture_output=True,
        text=True,
        cwd=work,
    )
    assert build.returncode == 0, build.stderr[-3000:]
    # `make install` prints no warning of ours: e.g. one per configs/ sub-folder "would be ignored" as a package
    assert "BuildBackendWarning" not in build.stderr, build.stderr[-3000:]
    (wheel,) = work.glob("vitlab-*.whl")
    venv = work / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True)
    site = Path(
        subprocess.run(
            [str(venv / "bin" / "python"), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
    )
    (site / "borrowed_dependencies.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    install = subprocess.run(
        [sys.executable, "-m", "pip", "--python", str(venv / "bin" / "python"), "install", "--no-deps", str(wheel)],
        capture_output=True,
        text=True,
    )
    assert install.returncode == 0, install.stderr[-3000:]
    return venv


def _run(venv: Path, args: list[str], cwd: Path) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    env["PATH"] = f"{venv / 'bin'}:{env.get('PATH', '')}"
    return subprocess.run(args, capture_output=True, text=True, cwd=cwd, env=env, timeout=600)


@pytest.mark.slow
def test_the_wheel_ships_the_configs_and_runs_outside_the_checkout(wheel_venv: Path, tmp_path: Path) -> None:
    where = _run(
        wheel_venv,
        ["python", "-c", "import vitlab, vitlab.configs as c; print(vitlab.__file__); print(c.config_dir())"],
        tmp_path,
    )
    assert where.returncode == 0, where.stderr
    package_file, configs = where.stdout.split()
    assert Path(package_file).is_relative_to(wheel_venv), "vitlab must come from the wheel, not the checkout"
    assert Path(configs).is_relative_to(wheel_venv)
    shipped = {p.relative_to(configs).as_posix() for p in Path(configs).rglob("*.yaml")}
    tracked = subprocess.run(["git", "ls-files", "configs"], capture_output=True, text=True, cwd=ROOT).stdout.split()
    assert {f.removeprefix("configs/") for f in tracked if f.endswith(".yaml")} <= shipped
    assert "local/default.yaml" not in shipped  # a user's own machine settings (git-ignored) stay out

    run = _run(wheel_venv, ["vitlab-train", "debug=fdr", f"paths.log_dir={tmp_path / 'out'}"], tmp_path)
    assert run.returncode == 0, run.stdout[-2000:] + run.stderr[-3000:]
    assert "test/acc = " in run.stdout

    for tool in ("vitlab-eval", "vitlab-bench"):  # their configs compose from the wheel too
        composed = _run(wheel_venv, [tool, "--cfg", "job"], tmp_path)
        assert composed.returncode == 0 and "_target_" in composed.stdout, composed.stderr[-2000:]

    listing = _run(wheel_venv, ["vitlab-reproduce"], tmp_path)
    assert listing.returncode == 0, listing.stderr[-2000:]
    assert "vix" in listing.stdout and "mini_digits" in listing.stdout


@pytest.mark.slow
def test_a_users_own_configs_compose_with_the_packaged_ones(wheel_venv: Path, tmp_path: Path) -> None:
    """The README's "your own configs" example: a new backbone preset and an experiment, outside vitlab."""
    project = tmp_path / "my_project"
    shutil.copytree(EXAMPLE, project / "configs")
    out = project / "out"
    run = _run(
        wheel_venv,
        ["vitlab-train", "--config-dir", "configs", "experiment=rope_vit48", "debug=fdr", f"paths.log_dir={out}"],
        project,
    )
    assert run.returncode == 0, run.stdout[-2000:] + run.stderr[-3000:]
    (config,) = out.rglob(".hydra/config.yaml")
    text = config.read_text()
    assert "embed_dim: 192" in text and "install_rope" in text and "linformer" in text.lower()
