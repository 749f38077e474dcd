"""Optional extras: a missing one is named with its pip command where the option is used; the core needs none.

A package counts as missing here when `sys.modules[name] = None` (Python then refuses to import it), which is
what an environment without the extra looks like to the code under test.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import tomllib
import torch

from vitlab.compose import compose_config
from vitlab.configs import config_dir
from vitlab.extras import EXTRAS, MissingExtra, check_argv, require
from vitlab.models.geometry import TokenGeometry
from vitlab.models.heads.memory_ode import MemoryODEHead

ROOT = Path(__file__).resolve().parents[1]


def hide(monkeypatch: pytest.MonkeyPatch, *modules: str) -> None:
    for name in modules:
        monkeypatch.setitem(sys.modules, name, None)


def test_the_extras_table_matches_pyproject() -> None:
    optional = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["optional-dependencies"]
    assert set(EXTRAS) == set(optional) - {"all", "dev"}
    assert optional["all"] == [f"vitlab[{','.join(EXTRAS)}]"]


def test_the_core_dependencies_run_the_default_experiment_without_any_extra() -> None:
    """The default composed config references no optional package (its targets import with core deps only)."""
    core = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]
    names = {d.split(">")[0].split("<")[0].split("=")[0].strip() for d in core}
    assert not names & {"peft", "torchdiffeq", "optuna", "cmaes", "hydra-submitit-launcher", "matplotlib"}
    cfg = compose_config("train")
    assert "TensorBoard" not in str(cfg.logger) and "submitit" not in str(cfg.get("hydra", ""))


@pytest.mark.parametrize("missing", ["peft", "torchdiffeq"])
def test_a_missing_extra_is_named_with_its_pip_command(monkeypatch: pytest.MonkeyPatch, missing: str) -> None:
    hide(monkeypatch, missing)
    geometry = TokenGeometry(dim=16, num_heads=2, depth=2, grid_size=(2, 2), num_prefix_tokens=1)
    with pytest.raises(MissingExtra) as info:
        if missing == "peft":
            from vitlab.models.peft.lora import lora

            lora(torch.nn.Module())  # type: ignore[arg-type]
        else:
            MemoryODEHead(geometry, num_classes=3, solver="dopri5")
    extra = "peft" if missing == "peft" else "ode"
    message = str(info.value)
    assert f"pip install 'vitlab[{extra}]'" in message and "\n" not in message
    MemoryODEHead(geometry, num_classes=3, solver="rk4")  # fixed-grid solvers need nothing optional


def test_a_broken_dependency_of_an_extra_keeps_its_real_error(monkeypatch: pytest.MonkeyPatch) -> None:
    """peft installed but its own import failing is not "install vitlab[peft]": the real error stays."""
    monkeypatch.delitem(sys.modules, "peft", raising=False)
    hide(monkeypatch, "transformers")
    for name in [m for m in sys.modules if m.startswith("peft.")]:
        monkeypatch.delitem(sys.modules, name)
    with pytest.raises(ModuleNotFoundError) as info:
        require("peft")
    assert not isinstance(info.value, MissingExtra)


@pytest.mark.parametrize(
    ("arg", "plugin", "extra"),
    [
        ("hydra/launcher=submitit_slurm", "hydra_plugins.hydra_submitit_launcher", "slurm"),
        ("hparams_search=optuna", "optuna", "sweep"),  # vitlab's own sweeper needs Optuna itself
        ("hydra/sweeper=vitlab_optuna", "optuna", "sweep"),
    ],
)
def test_hydra_plugins_are_named_before_hydra_composes(
    monkeypatch: pytest.MonkeyPatch, arg: str, plugin: str, extra: str
) -> None:
    check_argv(["seed=1", arg])  # installed here (make install installs every extra): nothing to say
    hide(monkeypatch, plugin)
    with pytest.raises(MissingExtra, match=rf"{arg}.*pip install 'vitlab\[{extra}\]'"):
        check_argv(["seed=1", arg])
    check_argv(["seed=1", "hydra/launcher=basic"])


def test_tables_render_without_matplotlib_but_say_the_figure_is_missing(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    from vitlab.reproduce import collect, find_table, load_table, write_all

    spec = load_table(find_table(Path(config_dir()), "vix", "mini_digits"))
    results = collect(spec, "mini", tmp_path / "runs")
    hide(monkeypatch, "matplotlib")
    paths = write_all(results, spec, tmp_path / "tables")
    assert sorted(paths) == ["csv", "md", "tex"] and not list((tmp_path / "tables").glob("*.png"))
    assert "pip install 'vitlab[plots]'" in caplog.text


def test_logger_tensorboard_without_tensorboard_names_the_extra(monkeypatch: pytest.MonkeyPatch) -> None:
    from vitlab.training.components import build_trainer

    cfg = compose_config("train", ["logger=tensorboard"])
    hide(monkeypatch, "tensorboard")
    with pytest.raises(MissingExtra, match=r"logger\.tensorboard .*vitlab\[tensorboard\]"):
        build_trainer(cfg)


def test_vitlab_train_names_the_extra_and_exits_2(tmp_path: Path) -> None:
    """The command line, without the submitit plugin: one paragraph, exit 2, nothing written."""
    script = (
        "import sys; sys.modules['hydra_plugins.hydra_submitit_launcher'] = None\n"
        "from vitlab.cli.train import main\n"
        f"sys.argv = ['vitlab-train', '-m', 'hydra/launcher=submitit_slurm', 'paths.log_dir={tmp_path / 'out'}']\n"
        "main()\n"
    )
    run = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, cwd=tmp_path)
    assert run.returncode == 2, run.stderr
    assert "pip install 'vitlab[slurm]'" in run.stderr and "Traceback" not in run.stderr
    assert not (tmp_path / "out").exists()
