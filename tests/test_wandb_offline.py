"""W&B never takes a run down and never hangs it: no key, a closed or silent server, a resume (issue 23, scope 4).

Nothing here reaches a network: the servers are local sockets (a closed port, a listener that never answers, a
local HTTP server), and the W&B runs are offline. In-process tests replace `wandb.init` to see what the logger
asks of it; the two `vitlab-train` runs are the real thing, measured.
"""

from __future__ import annotations

import http.server
import logging
import os
import re
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from conftest import ROOT, TINY, CliRun
from vitlab.errors import ConfigError
from vitlab.runs.wandb_login import server_unreachable
from vitlab.training import wandb_logger
from vitlab.training.wandb_logger import FailSafeWandbLogger

FAKE_KEY = "0123456789abcdef" * 2 + "01234567"  # 40 hex characters: looks like a key, opens nothing
FAST = [*TINY, "+trainer.limit_train_batches=2", "+trainer.limit_val_batches=1", "+trainer.limit_test_batches=1"]


def closed_port() -> int:
    with socket.socket() as sock:  # bound, then closed: nothing listens there
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture
def silent_server() -> Iterator[str]:
    """A server that accepts TCP connections (the kernel completes them) and never says a word."""
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen(16)
    yield f"http://127.0.0.1:{sock.getsockname()[1]}"
    sock.close()


def test_probe_says_a_closed_port_is_unreachable_at_once() -> None:
    start = time.monotonic()
    reason = server_unreachable(f"http://127.0.0.1:{closed_port()}", timeout_s=10)
    assert reason is not None and "unreachable (connection refused)" in reason, reason
    assert time.monotonic() - start < 2


def test_probe_gives_up_on_a_silent_server_within_its_timeout(silent_server: str) -> None:
    start = time.monotonic()
    reason = server_unreachable(silent_server, timeout_s=1.0)
    waited = time.monotonic() - start
    assert reason == f"{silent_server} did not answer within 1 s", reason
    assert 0.9 < waited < 2.0, f"waited {waited:.2f} s for a 1 s timeout"
    deadline = time.monotonic() + 2  # the probe thread ends with its socket timeout: nothing is left hanging
    while any(t.name == "vitlab-wandb-probe" for t in threading.enumerate()) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not any(t.name == "vitlab-wandb-probe" for t in threading.enumerate())


def test_probe_counts_any_http_answer_as_reachable() -> None:
    class NotFound(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            self.send_error(404)

        def log_message(self, *args: Any) -> None:
            pass

    server = http.server.HTTPServer(("127.0.0.1", 0), NotFound)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        assert server_unreachable(f"http://127.0.0.1:{server.server_address[1]}", timeout_s=5) is None
    finally:
        server.shutdown()
        server.server_close()


class FakeWandb:
    """Records every `wandb.init` call; `fail(kwargs)` may raise to play a server."""

    def __init__(self, tmp_path: Path, start_step: int = 0, fail: Any = None) -> None:
        self.calls: list[dict[str, Any]] = []
        self.logged: list[tuple[dict[str, Any], int | None]] = []
        self.tmp_path, self.start_step, self.fail = tmp_path, start_step, fail

    def init(self, **kwargs: Any) -> Any:
        self.calls.append(kwargs)
        if self.fail is not None:
            self.fail(kwargs)
        run_id = kwargs.get("id") or "abc123"
        kind = "offline-run" if kwargs.get("mode") == "offline" else "run"
        files = self.tmp_path / "wandb" / f"{kind}-20260101_000000-{run_id}" / "files"
        files.mkdir(parents=True, exist_ok=True)
        return SimpleNamespace(
            id=run_id,
            dir=str(files),
            step=self.start_step,
            define_metric=lambda *a, **k: None,
            log=lambda data, step=None: self.logged.append((data, step)),
        )


@pytest.fixture
def fake_wandb(monkeypatch, tmp_path) -> Iterator[Any]:
    import wandb

    def install(start_step: int = 0, fail: Any = None, key: bool = True, reachable: bool = True) -> FakeWandb:
        fake = FakeWandb(tmp_path, start_step, fail)
        monkeypatch.setattr(wandb, "init", fake.init)
        monkeypatch.setattr(wandb, "run", None)
        monkeypatch.setattr(wandb_logger, "has_wandb_credentials", lambda: key)
        monkeypatch.setattr(wandb_logger, "UNREACHABLE", {})  # each test is a process of its own
        monkeypatch.setattr(wandb_logger, "base_url", lambda settings: "http://wandb.example")
        monkeypatch.setattr(
            wandb_logger, "server_unreachable", lambda url, t: None if reachable else f"{url} is unreachable (test)"
        )
        return fake

    monkeypatch.delenv("WANDB_MODE", raising=False)
    yield install


def test_a_sweep_waits_for_a_silent_server_once(monkeypatch, silent_server) -> None:
    """The jobs of a multirun share a process: the second job goes offline at once."""
    monkeypatch.setattr(wandb_logger, "UNREACHABLE", {})
    monkeypatch.setattr(wandb_logger, "has_wandb_credentials", lambda: True)
    monkeypatch.setattr(wandb_logger, "base_url", lambda settings: silent_server)
    monkeypatch.delenv("WANDB_MODE", raising=False)
    waits = []
    for _ in range(2):
        start = time.monotonic()
        reason = FailSafeWandbLogger(project="vitlab", settings={"init_timeout": 1})._offline_reason(None, {})
        waits.append(time.monotonic() - start)
    assert reason == f"{silent_server} did not answer within 1 s (found by an earlier run of this process)"
    assert waits[0] > 0.9 and waits[1] < 0.2, waits


def make_logger(tmp_path: Path, **kwargs: Any) -> FailSafeWandbLogger:
    return FailSafeWandbLogger(project="vitlab", save_dir=str(tmp_path), id="abc123", **kwargs)


def test_a_run_resumed_online_is_rewound_to_its_checkpoint_step(fake_wandb, tmp_path) -> None:
    fake = fake_wandb()
    logger = make_logger(tmp_path, resume="allow", resume_step=40, settings={"init_timeout": 7})
    logger.experiment  # noqa: B018 (starts the run)
    (call,) = fake.calls
    assert call["resume_from"] == "abc123?_step=40" and call["resume"] is None  # wandb refuses both at once
    assert call["settings"]["init_timeout"] == 7.0 and "anonymous" not in call
    logger.log_metrics({"train/loss": 1.0}, step=41)
    assert fake.logged == [({"train/loss": 1.0, "trainer/global_step": 41}, 41)]  # W&B step = global step


def test_a_server_without_rewind_continues_the_run_and_says_what_the_charts_show(fake_wandb, tmp_path, caplog) -> None:
    def no_rewind(kwargs: dict[str, Any]) -> None:
        if kwargs.get("resume_from"):
            raise RuntimeError("failed to rewind run: rewind is not enabled on this server")

    fake = fake_wandb(start_step=57, fail=no_rewind)
    logger = make_logger(tmp_path, resume="allow", resume_step=40)
    with caplog.at_level(logging.WARNING, logger="vitlab"):
        logger.experiment  # noqa: B018
    assert [c.get("resume") for c in fake.calls] == [None, "allow"]
    (line,) = [r.getMessage() for r in caplog.records]
    assert "did not rewind run abc123 to the checkpoint's step 40" in line and "steps 40-56" in line, line
    logger.log_metrics({"train/loss": 1.0}, step=45)  # already on the server: not a second point
    logger.log_metrics({"train/loss": 0.5}, step=57)
    assert [step for _, step in fake.logged] == [57]


def test_an_offline_resume_names_every_directory_to_sync_and_the_doubled_steps(fake_wandb, tmp_path, caplog) -> None:
    earlier = tmp_path / "wandb" / "offline-run-20250101_000000-abc123"
    earlier.mkdir(parents=True)
    fake = fake_wandb(key=False)
    logger = make_logger(tmp_path, resume="allow", resume_step=40)
    with caplog.at_level(logging.WARNING, logger="vitlab"):
        logger.experiment  # noqa: B018
    (call,) = fake.calls
    assert call["mode"] == "offline" and "resume_from" not in call  # offline, W&B cannot rewind
    (line,) = [r.getMessage() for r in caplog.records]
    now = tmp_path / "wandb" / "offline-run-20260101_000000-abc123"
    assert line.startswith("W&B: no API key configured"), line
    assert f"`wandb sync {earlier} {now}`" in line, line
    assert "step 40" in line and "appear twice" in line, line


@pytest.mark.parametrize("failure", ["unreachable", "init"])
def test_a_server_that_cannot_be_used_means_offline_in_one_line(fake_wandb, tmp_path, caplog, failure) -> None:
    def comm_error(kwargs: dict[str, Any]) -> None:
        if kwargs.get("mode") != "offline":
            raise RuntimeError("CommError: Run initialization has timed out after 30.0 sec.")

    fake = fake_wandb(fail=comm_error if failure == "init" else None, reachable=failure != "unreachable")
    with caplog.at_level(logging.WARNING, logger="vitlab"):
        make_logger(tmp_path).experiment  # noqa: B018
    assert fake.calls[-1]["mode"] == "offline" and fake.calls[-1]["settings"]["silent"] is True
    (line,) = [r.getMessage() for r in caplog.records]
    why = "http://wandb.example is unreachable" if failure == "unreachable" else "wandb.init failed online"
    assert line.startswith(f"W&B: {why}") and "Upload it later with `wandb sync " in line, line
    from wandb.analytics.opentelemetry import opentelemetry_proxy

    # wandb's usage analytics would post to the server at exit, 10 s per try against a silent one
    assert opentelemetry_proxy.get_open_telemetry_proxy() is None


@pytest.mark.parametrize("value", ["soon", 0, -5])
def test_a_bad_init_timeout_names_the_key(value) -> None:
    with pytest.raises(ConfigError, match=r"logger\.wandb\.settings\.init_timeout=.* seconds > 0"):
        FailSafeWandbLogger(project="vitlab", settings={"init_timeout": value})


def test_resume_in_place_hands_the_checkpoint_step_to_the_logger(tmp_path) -> None:
    from vitlab.cli.in_place import Attempt, apply_attempt
    from vitlab.compose import compose_config
    from vitlab.runs.state import RunState

    cfg = compose_config("train", [*TINY, "logger=wandb", f"paths.log_dir={tmp_path}"])
    state = RunState(overrides=[], attempts=[{}, {}])  # the second attempt of this run directory
    apply_attempt(cfg, Attempt(tmp_path, state, tmp_path / "last.ckpt", position={"global_step": 40}))
    assert (cfg.logger.wandb.id, cfg.logger.wandb.resume_step) == (state.wandb_id, 40)


def wandb_env(tmp_path: Path, **extra: str) -> dict[str, str]:
    """A process environment with no W&B settings of the user's: home, config and wandb dirs in tmp_path."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("WANDB_")}
    env |= {"HOME": str(tmp_path / "home"), "NETRC": str(tmp_path / "netrc"), "WANDB_DIR": str(tmp_path / "wb")}
    env |= {"WANDB_CONFIG_DIR": str(tmp_path / "wandb-config"), "WANDB_CACHE_DIR": str(tmp_path / "wandb-cache")}
    return env | extra


def train(args: list[str], log_dir: Path, env: dict[str, str]) -> CliRun:
    """`vitlab-train` in exactly `env` (conftest's run_cli disables W&B, which is what is tested here)."""
    proc = subprocess.run(
        [sys.executable, "-m", "vitlab.cli.train", *args, f"paths.log_dir={log_dir}"],
        cwd=ROOT, env={**env, "PYTHONWARNINGS": "ignore"}, capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    return CliRun(proc.returncode, proc.stdout, proc.stderr, log_dir)


def stamp(line: str) -> datetime:
    return datetime.strptime(line[1:24], "%Y-%m-%d %H:%M:%S,%f")


def check_offline_run(run: Any, reason: str) -> float:
    """The run ended ok with one W&B line naming `reason` and a `wandb sync` of files that exist; returns the
    seconds from the last log line before the logger started to that line."""
    output = run.stdout + run.stderr
    assert run.returncode == 0 and "Traceback" not in output, output[-3000:]
    (record,) = run.results()
    assert record["status"] == "ok", record
    lines = output.splitlines()
    (at,) = [i for i, line in enumerate(lines) if "W&B:" in line]
    assert reason in lines[at], lines[at]
    (sync_dir,) = re.findall(r"`wandb sync (\S+)`", lines[at])
    assert Path(sync_dir).parent == Path(record["run_dir"]) / "wandb", sync_dir  # in the run directory
    assert list(Path(sync_dir).glob("run-*.wandb")), f"no offline run file in {sync_dir}"
    before = [line for line in lines[:at] if line.startswith("[20")]
    return (stamp(lines[at]) - stamp(before[-1])).total_seconds()


@pytest.mark.slow
def test_no_api_key_logs_offline_in_one_line(tmp_path) -> None:
    run = train([*FAST, "logger=wandb"], tmp_path / "logs", wandb_env(tmp_path))
    print(f"no key: {check_offline_run(run, 'W&B: no API key configured'):.1f} s to offline")
    assert "UsageError" not in run.stderr and "anonymous" not in run.stderr


@pytest.mark.slow
@pytest.mark.parametrize("server", ["closed", "silent"])
def test_a_key_and_no_server_mean_offline_in_bounded_time(tmp_path, silent_server, server) -> None:
    """A fake key and WANDB_BASE_URL at a closed port (refused at once) or at a listener that never answers
    (the probe's 3 s); before, wandb waited 90 s and more, then the run died with a CommError traceback."""
    url = silent_server if server == "silent" else f"http://127.0.0.1:{closed_port()}"
    env = wandb_env(tmp_path, WANDB_API_KEY=FAKE_KEY, WANDB_BASE_URL=url)
    args = [*FAST, "logger=wandb", "logger.wandb.settings.init_timeout=3"]
    run = train(args, tmp_path / "logs", env)
    why = f"{url} did not answer within 3 s" if server == "silent" else f"{url} is unreachable (connection refused)"
    waited = check_offline_run(run, f"W&B: {why}")
    print(f"{server} server: {waited:.1f} s to offline")
    # the probe (3 s or nothing), then the offline run's start (seconds on a loaded machine)
    assert (3 if server == "silent" else 0) <= waited < 30, f"{waited:.1f} s from the line before W&B to offline"
