"""Run bookkeeping: W&B never waits for a login, results are written atomically, errors are found."""

from __future__ import annotations

import json
import os
import subprocess
import sys

from hydra.errors import InstantiationException
from omegaconf import OmegaConf

from vitlab.cli.runner import configure_wandb
from vitlab.errors import ConfigError, find_config_error
from vitlab.runs.files import write_json


def _cfg():
    return OmegaConf.create({"logger": {"wandb": {"_target_": "x", "offline": False}}})


def test_wandb_goes_offline_without_an_api_key(monkeypatch, tmp_path) -> None:
    for var in ("WANDB_API_KEY", "WANDB_MODE"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("NETRC", str(tmp_path / "netrc"))
    cfg = _cfg()
    configure_wandb(cfg)
    assert cfg.logger.wandb.offline is True


def test_wandb_stays_online_with_a_key(monkeypatch) -> None:
    monkeypatch.delenv("WANDB_MODE", raising=False)
    monkeypatch.setenv("WANDB_API_KEY", "x" * 40)
    cfg = _cfg()
    configure_wandb(cfg)
    assert cfg.logger.wandb.offline is False


def test_results_json_maps_non_finite_numbers_to_null(tmp_path) -> None:
    write_json(tmp_path / "results.json", {"test/acc": float("nan"), "status": "failed"})
    assert json.loads((tmp_path / "results.json").read_text()) == {"test/acc": None, "status": "failed"}
    assert not list(tmp_path.glob("*.tmp"))


def test_config_errors_are_found_behind_hydra_wrappers() -> None:
    inner = ConfigError("data.x=1 is wrong")
    try:
        try:
            raise inner
        except ConfigError as exc:
            raise InstantiationException("Error in call to target") from exc
    except InstantiationException as wrapped:
        assert find_config_error(wrapped) is inner
    assert find_config_error(RuntimeError("bug")) is None


def test_a_self_hosted_wandb_server_with_a_netrc_entry_stays_online(tmp_path) -> None:
    """Credentials are asked of wandb itself (its host, its files), not guessed from api.wandb.ai in ~/.netrc.
    In a subprocess: wandb.login() keeps what it finds for the rest of the process."""
    netrc = tmp_path / "netrc"
    netrc.write_text(f"machine wandb.lab.example\n  login user\n  password {'k' * 40}\n")
    netrc.chmod(0o600)
    check = "from vitlab.runs.wandb_login import should_force_offline as f; print(f())"
    env = {k: v for k, v in os.environ.items() if not k.startswith("WANDB_")}
    env |= {"NETRC": str(netrc), "HOME": str(tmp_path), "WANDB_CONFIG_DIR": str(tmp_path / "wandb")}
    online = subprocess.run([sys.executable, "-c", check], env={**env, "WANDB_BASE_URL": "https://wandb.lab.example"},
                            capture_output=True, text=True)  # fmt: skip
    elsewhere = subprocess.run([sys.executable, "-c", check], env=env, capture_output=True, text=True)
    assert (online.stdout.strip(), elsewhere.stdout.strip()) == ("False", "True"), online.stderr + elsewhere.stderr
