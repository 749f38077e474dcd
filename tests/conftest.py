"""Shared helpers: compose the real configs, and run the real CLIs in a subprocess on tiny settings."""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from hydra.core.global_hydra import GlobalHydra
from omegaconf import DictConfig

import vitlab.cli.resolvers  # noqa: F401  (the ${vitlab.*} resolvers, as every console script registers them)
from vitlab.compose import compose_config

ROOT = Path(__file__).resolve().parents[1]
CONFIGS = ROOT / "configs"

# A ViT small enough to train in seconds on 2 cores: 16 px, patch 4 -> 16 tokens, dim 32, 2 blocks
# (configs/tiny/model.yaml, the model every table's scale=smoke uses too).
TINY = [
    "tiny=model",
    "trainer.max_epochs=1",
    "trainer.enable_progress_bar=false",
    "trainer.accelerator=cpu",
]


def compose_cfg(overrides: list[str] | None = None, config_name: str = "train") -> DictConfig:
    """Compose a config exactly as the CLI would (with the `hydra` node, for `${hydra:...}`)."""
    return compose_config(config_name, overrides or [], return_hydra_config=True)


@dataclass
class CliRun:
    returncode: int
    stdout: str
    stderr: str
    log_dir: Path

    def results(self) -> list[dict[str, Any]]:
        return [json.loads(p.read_text()) for p in sorted(self.log_dir.rglob("results.json"))]

    def run_dirs(self) -> list[Path]:
        return sorted(p.parent for p in self.log_dir.rglob("config_resolved.yaml"))


def run_cli(
    command: str, args: list[str], log_dir: Path, env: dict[str, str] | None = None, timeout: int = 600
) -> CliRun:
    """`python -m vitlab.cli.<command> <args>` with outputs under `log_dir`; W&B disabled unless set."""
    full_env = {**os.environ, "WANDB_MODE": "disabled", "PYTHONWARNINGS": "ignore", **(env or {})}
    full_env.pop("HYDRA_FULL_ERROR", None)
    proc = subprocess.run(
        [sys.executable, "-m", f"vitlab.cli.{command}", *args, f"paths.log_dir={log_dir}"],
        cwd=ROOT,
        env=full_env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    return CliRun(proc.returncode, proc.stdout, proc.stderr, log_dir)


def final_weights(run_dir: Path) -> dict[str, Any]:
    """Every tensor of a run's last.ckpt (with EMA: the averaged and the live weights)."""
    import torch

    ckpt = torch.load(run_dir / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)
    live = {f"live.{k}": v for k, v in ckpt.get("current_model_state", {}).items()}
    return {**ckpt["state_dict"], **live}


def assert_identical(run_dir: Path, reference: Path, why: str) -> None:
    """Two finished runs are the same experiment to the bit: test/loss, test/acc, val/acc, epochs, weights."""
    import torch

    got, want = (json.loads((d / "results.json").read_text()) for d in (run_dir, reference))
    for key in ("test/loss", "test/acc", "val/acc", "epochs"):
        assert got[key] == want[key], f"{why}: {key} {got[key]} != {want[key]}"
    a, b = final_weights(run_dir), final_weights(reference)
    assert a.keys() == b.keys()
    differ = [k for k in a if not torch.equal(a[k], b[k])]
    assert not differ, f"{why}: {len(differ)} tensors differ, e.g. {differ[:3]}"


@pytest.fixture(autouse=True)
def _clear_hydra() -> None:
    yield
    GlobalHydra.instance().clear()


@pytest.fixture(autouse=True)
def _restore_environment() -> None:
    """Each test starts from the environment the session started with: code under test sets variables for the
    processes it starts (e.g. `open_attempt` hands rank 0's decision to ranks > 0 in VITLAB_RESUME_FROM, W&B's
    mode), and a later test's subprocesses, which inherit `os.environ`, must not act on another test's values."""
    before = dict(os.environ)
    yield
    for key in set(os.environ) - set(before):
        del os.environ[key]
    os.environ.update(before)


@pytest.fixture(autouse=True)
def _drop_log_handlers_of_closed_streams() -> None:
    """An in-process Hydra job configures logging with handlers on the sys.stdout/stderr of its moment, which in
    a test is pytest's capture, closed when that test ends. A later test logging through such a handler gets
    logging's "--- Logging error --- ValueError: I/O operation on closed file" on its stderr: drop them first."""
    loggers = [
        logging.getLogger(),
        *(v for v in logging.Logger.manager.loggerDict.values() if isinstance(v, logging.Logger)),
    ]
    for logger in loggers:
        for handler in list(logger.handlers):
            if getattr(getattr(handler, "stream", None), "closed", False):
                logger.removeHandler(handler)


@pytest.fixture(scope="session")
def packed_digits(tmp_path_factory) -> Path:
    """Digits packed once (`vitlab-data pack data=digits`): a root for `data=shards`."""
    from omegaconf import OmegaConf

    from vitlab.data.digits import DigitsDataModule
    from vitlab.data.shards.pack import pack

    out = tmp_path_factory.mktemp("packed") / "digits"
    source = OmegaConf.to_container(compose_config("train", ["data=digits"]).data, resolve=True)
    pack(DigitsDataModule(), str(out), source=source, progress=False)  # type: ignore[arg-type]
    return out
