"""A W&B logger that never takes a run down or hangs it: offline when it cannot log online, in one line.

Lightning's `WandbLogger` goes offline by setting `WANDB_MODE`, which wandb ignores once its session has
started (vitlab's credential check starts it), so a run without a key still asked for one and died. This
logger passes the mode to `wandb.init` itself, and before going online checks for credentials and probes the
server for at most `settings.init_timeout` seconds (`logger.wandb.settings.init_timeout`, default 30; also
wandb's own bound on `wandb.init`). Any failure to start online falls back to an offline run, announced in one
line with the `wandb sync` command that uploads it. W&B's `_step` is the trainer's global step, so a run
continued in place (docs/resume.md) rewinds its W&B run to the checkpoint's step (`resume_from`); a server
without rewind, or an offline run, gets one line saying what the charts show.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from lightning_fabric.utilities.logger import _add_prefix
from pytorch_lightning.loggers import WandbLogger
from pytorch_lightning.loggers.logger import rank_zero_experiment
from pytorch_lightning.utilities import rank_zero_only

from vitlab.errors import ConfigError
from vitlab.runs.wandb_login import has_wandb_credentials, server_unreachable

log = logging.getLogger("vitlab")

DEFAULT_TIMEOUT_S = 30.0
OFFLINE_MODES = ("offline", "dryrun")
UNREACHABLE: dict[str, str] = {}  # base URL -> why, for the rest of this process (a multirun's jobs)


class FailSafeWandbLogger(WandbLogger):
    """`WandbLogger` that falls back to offline logging instead of failing or waiting on the network.

    `resume_step` (set by vitlab's in-place resume): the checkpoint's global step; the W&B run is rewound to
    it, so the steps the stopped attempt logged after its checkpoint are not logged twice.
    """

    def __init__(self, *args: Any, resume_step: int | None = None, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._wandb_init.pop("anonymous", None)  # has no effect in wandb >= 0.19; passing it prints a warning
        self._resume_step = resume_step
        self._skip_before = -1  # steps below it are on the server already (resumed without rewind)
        settings = dict(self._wandb_init.get("settings") or {})
        self._timeout_s = init_timeout(settings.get("init_timeout", DEFAULT_TIMEOUT_S))

    @property
    @rank_zero_experiment
    def experiment(self) -> Any:
        """The W&B run, started on first use: online if the server can be used now, else offline."""
        import wandb

        if self._experiment is None:
            attach_id = getattr(self, "_attach_id", None)
            if wandb.run is not None:  # a run started by someone else (a sweep agent): log into it
                self._experiment = wandb.run
            elif attach_id is not None and hasattr(wandb, "_attach"):  # a spawned worker of this logger
                self._experiment = wandb._attach(attach_id)
            else:
                self._experiment = self._start()
            if getattr(self._experiment, "define_metric", None) is not None:
                self._experiment.define_metric("trainer/global_step")
                self._experiment.define_metric("*", step_metric="trainer/global_step", step_sync=True)
        return self._experiment

    @rank_zero_only
    def log_metrics(self, metrics: Mapping[str, float], step: int | None = None) -> None:
        """Log at W&B step = the trainer's global step (what a rewind to a checkpoint's step needs)."""
        if step is None or self._wandb_init.get("sync_tensorboard"):
            super().log_metrics(metrics, step)
            return
        if step < self._skip_before:
            return  # logged by the stopped attempt; an exact resume recomputes the same values
        metrics = _add_prefix(metrics, self._prefix, self.LOGGER_JOIN_CHAR)
        self.experiment.log(dict(metrics, **{"trainer/global_step": step}), step=step)

    def _start(self) -> Any:
        import wandb

        init = dict(self._wandb_init)
        settings = {**dict(init.pop("settings", None) or {}), "init_timeout": self._timeout_s}
        mode = init.get("mode") or os.environ.get("WANDB_MODE")
        if mode == "disabled":
            return wandb.init(**init, settings=settings)
        reason = self._offline_reason(mode, settings)
        if reason is None:
            try:
                return self._start_online(init, settings)
            except Exception as exc:  # logging is a record of the run, never a reason for it to fail
                reason = f"wandb.init failed online ({type(exc).__name__}: {first_line(exc)})"
        return self._start_offline(init, settings, reason)

    def _offline_reason(self, mode: str | None, settings: dict[str, Any]) -> str | None:
        """Why this run logs offline (None: try online). The probe is skipped when nothing would go online."""
        if mode in OFFLINE_MODES:
            return f"WANDB_MODE={mode}" if os.environ.get("WANDB_MODE") == mode else f"logger.wandb.mode={mode}"
        if not has_wandb_credentials():  # also why configure_wandb set offline=true
            return "no API key configured (WANDB_API_KEY or `wandb login`)"
        if self._offline:
            return "logger.wandb.offline=true"
        url = base_url(settings)
        if url in UNREACHABLE:  # a sweep's later jobs in this process: no second wait for the same silence
            return f"{UNREACHABLE[url]} (found by an earlier run of this process)"
        reason = server_unreachable(url, self._timeout_s)
        if reason is not None:
            UNREACHABLE[url] = reason
        return reason

    def _start_online(self, init: dict[str, Any], settings: dict[str, Any]) -> Any:
        import wandb

        step, run_id = self._resume_step, init.get("id")
        if step is None or run_id is None:
            return wandb.init(**init, settings=settings)
        try:  # rewind: the history from the checkpoint's step on is replaced by this attempt's
            run = wandb.init(**{**init, "resume": None, "resume_from": f"{run_id}?_step={step}"}, settings=settings)
            log.info("W&B: run %s rewound to step %d, the checkpoint's", run_id, step)
            return run
        except Exception as exc:
            if "rewind" not in str(exc).lower() and "resume_from" not in str(exc).lower():
                raise  # not the rewind: the server is not usable, so go offline
            why = first_line(exc)
        run = wandb.init(**{**init, "resume": "allow"}, settings=settings)
        self._skip_before = int(run.step)
        if run.step > step:
            log.warning(
                "W&B: the server did not rewind run %s to the checkpoint's step %d (%s); it continues at step %d, "
                "so steps %d-%d keep the stopped attempt's values and are not logged again (an exact resume "
                "recomputes the same ones).",
                run_id, step, why, run.step, step, run.step - 1,
            )  # fmt: skip
        return run

    def _start_offline(self, init: dict[str, Any], settings: dict[str, Any], reason: str) -> Any:
        import wandb

        stop_wandb_analytics()
        # silent: wandb's own offline banner would repeat, over three lines, what the line below says
        run = wandb.init(**{**init, "mode": "offline"}, settings={**settings, "silent": True})
        run_dir = Path(run.dir).parent  # <save_dir>/wandb/offline-run-<time>-<id>: what `wandb sync` uploads
        earlier = sorted(p for p in run_dir.parent.glob(f"offline-run-*-{run.id}") if p != run_dir)
        command = "wandb sync " + " ".join(str(p) for p in [*earlier, run_dir])
        resumed = ""
        if self._resume_step is not None:
            resumed = (
                f" This attempt continues W&B run {run.id} from the checkpoint's step {self._resume_step}, which an "
                "offline run cannot rewind: once synced, steps from there on that the stopped attempt had logged "
                "appear twice in the charts, with the same values (an exact resume)."
            )
        log.warning("W&B: %s; logging offline to %s. Upload it later with `%s`.%s", reason, run_dir, command, resumed)
        return run


def init_timeout(value: Any) -> float:
    """`logger.wandb.settings.init_timeout` as seconds > 0, or a ConfigError naming the key."""
    try:
        seconds = float(value)
    except (TypeError, ValueError):
        seconds = float("nan")
    if not seconds > 0:
        raise ConfigError(
            f"logger.wandb.settings.init_timeout={value!r} is not a number of seconds > 0: it bounds how long a run "
            f"waits for the W&B server before logging offline (default {DEFAULT_TIMEOUT_S:g})."
        )
    return seconds


def base_url(settings: dict[str, Any]) -> str:
    """The W&B server this run would talk to: the logger's settings, else wandb's (WANDB_BASE_URL, files)."""
    if settings.get("base_url"):
        return str(settings["base_url"])
    import wandb

    return str(wandb.setup().settings.base_url)


def stop_wandb_analytics() -> None:
    """Keep wandb's usage analytics from posting to the server at exit: they follow wandb's session, which
    started online (the credential check), so an offline run still tried, 10 s per try against a silent
    server or a firewall that drops packets. The module is wandb's internal one: if it moves, nothing breaks."""
    try:
        from wandb.analytics.opentelemetry import opentelemetry_proxy

        opentelemetry_proxy.disable()
    except (ImportError, AttributeError):
        pass


def first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__
