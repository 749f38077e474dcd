"""Start-up: `--help` and Hydra's config views answer without importing torch; `--cfg hydra --resolve` works.

How long the first training step takes against `import torch, pytorch_lightning, timm` is measured by
`vitlab-bench overhead` (a timing, so not asserted here).
"""

from __future__ import annotations

import subprocess
import sys

import pytest
import yaml

from vitlab.cli.show_hydra import overrides_of, resolved_hydra_yaml, wants_resolved_hydra

# runs an entry point's main() with the given argv, then says which heavy modules it imported
PROBE = """
import sys
sys.argv = [{name!r}, *{argv!r}]
from vitlab.cli.{module} import main
try:
    main()
except SystemExit as exc:
    assert not exc.code, exc.code
heavy = sorted(m for m in ("torch", "pytorch_lightning", "timm") if m in sys.modules)
print("HEAVY=" + ",".join(heavy))
"""


def imported_heavy(module: str, argv: list[str]) -> tuple[list[str], str]:
    code = PROBE.format(name=f"vitlab-{module}", argv=argv, module=module)
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    last = done.stdout.strip().splitlines()[-1]
    return [m for m in last.removeprefix("HEAVY=").split(",") if m], done.stdout


@pytest.mark.parametrize("argv", [["--help"], ["--cfg", "job", "seed=3"], ["--cfg", "hydra", "--resolve"]])
def test_train_cli_answers_without_importing_torch(argv: list[str]) -> None:
    heavy, out = imported_heavy("train", argv)
    assert heavy == [], f"vitlab-train {' '.join(argv)} imported {heavy}"
    assert out.strip()


def test_cfg_hydra_resolve_fills_the_run_directory_from_paths_log_dir(tmp_path) -> None:
    text = resolved_hydra_yaml("train", [f"paths.log_dir={tmp_path}", "task_name=probe"])
    hydra = yaml.safe_load(text)["hydra"]
    run_dir = hydra["run"]["dir"]
    assert run_dir.startswith(f"{tmp_path}/runs/") and run_dir.endswith("_probe")
    assert hydra["job_logging"]["handlers"]["file"]["filename"] == f"{run_dir}/probe.log"
    assert hydra["job"]["name"] == "train" and "help" not in hydra
    assert "${" not in text


def test_only_a_single_run_cfg_hydra_resolve_is_taken_over() -> None:
    assert wants_resolved_hydra(["--cfg", "hydra", "--resolve", "seed=1"])
    assert wants_resolved_hydra(["-c", "hydra", "--resolve"])
    assert not wants_resolved_hydra(["--cfg", "hydra"])  # unresolved: Hydra's own output is right
    assert not wants_resolved_hydra(["--cfg", "job", "--resolve"])
    assert not wants_resolved_hydra(["-m", "--cfg", "hydra", "--resolve", "seed=0,1"])  # sweeps: Hydra's launcher
    assert overrides_of(["--cfg", "hydra", "-p", "hydra.run", "--resolve", "a=1", "+b=2"]) == ["a=1", "+b=2"]


def test_cfg_hydra_resolve_with_a_bad_override_is_one_paragraph() -> None:
    code = "import sys; sys.argv = ['vitlab-train', '--cfg', 'hydra', '--resolve', 'model/mixer=bogus']\n"
    code += "from vitlab.cli.train import main; main()"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.returncode == 2
    assert "model/mixer/bogus" in done.stderr and "softmax" in done.stderr and "Traceback" not in done.stderr
