"""Options of the callbacks in configs/callbacks/ (checkpointing, early stopping, EMA, lr monitor, feature
redraw), checked before the trainer is built.

Lightning checks some of them only when the callback is built (a traceback through Hydra's instantiate) and
others only at the end of the first epoch (a monitor that is never logged) or never (a negative `min_delta`).
Every option the shipped callback configs set has a rule here, except paths and file-name patterns;
tests/test_bad_inputs.py fails when a callback config gains an option without one.
"""

from __future__ import annotations

import inspect
from typing import Any

from omegaconf import DictConfig, OmegaConf

from vitlab.cli.rules import COUNT, POSITIVE_INT, Rule, closest, is_one_of, refuse_name
from vitlab.errors import ConfigError

_ABSENT = object()
NULLABLE_COUNT, NUMBER, FLAG = Rule(int, 0, nullable=True), Rule(float, nullable=True), Rule(bool)
CALLBACK_RULES: dict[str, Rule] = {
    "callbacks.model_checkpoint.save_top_k": Rule(int, -1),  # -1: keep every checkpoint
    "callbacks.model_checkpoint.every_n_epochs": NULLABLE_COUNT,
    "callbacks.model_checkpoint.every_n_train_steps": NULLABLE_COUNT,
    "callbacks.model_checkpoint.save_weights_only": FLAG,
    "callbacks.model_checkpoint.auto_insert_metric_name": FLAG,
    "callbacks.model_checkpoint.enable_version_counter": FLAG,
    "callbacks.model_checkpoint.verbose": FLAG,
    "callbacks.last_checkpoint.every_n_epochs": NULLABLE_COUNT,
    "callbacks.last_checkpoint.every_n_train_steps": NULLABLE_COUNT,
    "callbacks.early_stopping.patience": COUNT,
    "callbacks.early_stopping.min_delta": Rule(float, 0),
    "callbacks.early_stopping.stopping_threshold": NUMBER,
    "callbacks.early_stopping.divergence_threshold": NUMBER,
    "callbacks.early_stopping.verbose": FLAG,
    "callbacks.early_stopping.strict": FLAG,
    "callbacks.early_stopping.check_finite": FLAG,
    "callbacks.early_stopping.check_on_train_epoch_end": Rule(bool, nullable=True),
    "callbacks.ema.decay": Rule(float, 0, 1),
    "callbacks.ema.update_every_n_steps": POSITIVE_INT,
    "callbacks.ema.update_starting_at_step": NULLABLE_COUNT,
    "callbacks.ema.update_starting_at_epoch": NULLABLE_COUNT,
    "callbacks.ema.use_buffers": FLAG,
    "callbacks.lr_monitor.log_momentum": FLAG,
    "callbacks.lr_monitor.log_weight_decay": FLAG,
    "callbacks.feature_redraw.seed": Rule(int, 0, 2**32 - 1),
    # feature probes (vitlab.training.probe_callback, docs/probes.md)
    "callbacks.probe.every_n_epochs": POSITIVE_INT,
    "callbacks.probe.k": POSITIVE_INT,
    "callbacks.probe.temperature": Rule(float, 0, open_low=True),
    "callbacks.probe.weighted": FLAG,
    "callbacks.probe.max_train_samples": Rule(int, 1, nullable=True),
    "callbacks.probe.max_eval_samples": Rule(int, 1, nullable=True),
    "callbacks.probe.linear": FLAG,
    "callbacks.probe.linear_c": Rule(float, 0, open_low=True),
}
# what vitlab logs (vitlab.training.module; dynamics/* from the dynamics monitor on ODE models)
METRICS = ("val/acc", "val/acc_top5", "val/loss", "train/acc", "train/loss", "train/reg_loss")
CALLBACK_CHOICES: dict[str, tuple[Any, ...]] = {
    "callbacks.lr_monitor.logging_interval": ("step", "epoch", None),
    "callbacks.early_stopping.mode": ("min", "max"),
    "callbacks.model_checkpoint.mode": ("min", "max"),
    "callbacks.model_checkpoint.save_last": (True, False, "link", None),
}
MONITORS = {"callbacks.early_stopping.monitor": False, "callbacks.model_checkpoint.monitor": True}  # key: nullable
NOT_CHECKED = ("_target_", "dirpath", "filename")  # paths and patterns: any string


def _monitor_ok(value: Any, nullable: bool) -> bool:
    if value is None:
        return nullable
    return isinstance(value, str) and (value in METRICS or value.startswith("dynamics/"))


def _options(target: str) -> list[str] | None:
    """The keyword arguments `target` takes, or None when it takes any (`**kwargs`) or cannot be imported (then
    instantiating it says why)."""
    from hydra.utils import get_object

    try:
        parameters = inspect.signature(get_object(target)).parameters.values()
    except (ImportError, AttributeError, ValueError, TypeError):
        return None
    if any(p.kind is p.VAR_KEYWORD for p in parameters):
        return None
    return [p.name for p in parameters if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)]


def check_callback_keys(cfg: DictConfig) -> None:
    """Raise `ConfigError` for a key a callback does not take (`+callbacks.dynamics_monitor.every=2`: Lightning's
    instantiate would fail with "takes no arguments", which names no key), with its options and the closest one."""
    callbacks = cfg.get("callbacks")
    if not OmegaConf.is_dict(callbacks):
        return
    for name, node in callbacks.items():
        if not OmegaConf.is_dict(node) or "_target_" not in node:
            continue
        options = _options(str(node["_target_"]))
        unknown = [k for k in node if not str(k).startswith("_") and options is not None and k not in options]
        if unknown:
            path, guess = f"callbacks.{name}", closest(unknown[0], options or [])
            hint = f" Did you mean {path}.{guess}?" if guess else ""
            raise ConfigError(
                f"{path}.{unknown[0]} is not an option of {path} ({node['_target_']}). Its options: "
                f"{', '.join(options or []) or 'none'}.{hint}"
            )


def check_callbacks(cfg: DictConfig) -> None:
    """Raise `ConfigError` (key, value, what is allowed) for the first callback option that cannot work; the
    numeric options are `CALLBACK_RULES`, checked with the other rules by `vitlab.cli.validate.check_config`."""
    check_callback_keys(cfg)
    for key, allowed in CALLBACK_CHOICES.items():
        value = OmegaConf.select(cfg, key, default=_ABSENT)
        if value is not _ABSENT and not is_one_of(value, allowed):
            raise refuse_name(key, value, allowed)
    for key, nullable in MONITORS.items():
        value = OmegaConf.select(cfg, key, default=_ABSENT)
        if value is not _ABSENT and not _monitor_ok(value, nullable):
            listed = ", ".join(METRICS) + ", dynamics/<name> (ODE models)" + (", null" if nullable else "")
            raise refuse_name(key, value, METRICS, listed=f"a metric vitlab logs: {listed}")
