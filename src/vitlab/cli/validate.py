"""Types and ranges of the numeric and boolean keys a user sets, checked before anything is built.

Without this, `data.img_size=abc`, `seed=1.5` or `trainer.max_epochs=-3` reach torch or Lightning and end
in a traceback that never names the key. Each rule says what is allowed; a key the composed config does not
have (another data set, another optimiser) is not checked.
"""

from __future__ import annotations

import math
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from vitlab.errors import ConfigError

_ABSENT = object()


@dataclass(frozen=True)
class Rule:
    """`kind`: int, float (ints accepted) or bool; `low`/`high` bounds (`open_low`/`open_high`: excluded)."""

    kind: type
    low: float | None = None
    high: float | None = None
    open_low: bool = False
    open_high: bool = False
    nullable: bool = False

    def allowed(self) -> str:
        name = {int: "an integer", float: "a number", bool: "true or false"}[self.kind]
        if self.low is not None and self.high is not None:
            left, right = ("(" if self.open_low else "["), (")" if self.open_high else "]")
            name += f" in {left}{self.low:g}, {self.high:g}{right}"
        elif self.low is not None:
            name += f" {'>' if self.open_low else '>='} {self.low:g}"
        elif self.high is not None:
            name += f" {'<' if self.open_high else '<='} {self.high:g}"
        return name + (" (or null)" if self.nullable else "")

    def accepts(self, value: Any) -> bool:
        if value is None:
            return self.nullable
        if self.kind is bool:
            return isinstance(value, bool)
        if isinstance(value, bool) or not isinstance(value, int if self.kind is int else (int, float)):
            return False
        if isinstance(value, float) and not math.isfinite(value):
            return False
        if self.low is not None and (value <= self.low if self.open_low else value < self.low):
            return False
        return not (self.high is not None and (value >= self.high if self.open_high else value > self.high))


POSITIVE_INT, COUNT, FRACTION = Rule(int, 1), Rule(int, 0), Rule(float, 0, 1, open_high=True)
RULES: dict[str, Rule] = {
    "seed": Rule(int, 0, 2**32 - 1),
    "train": Rule(bool),
    "test": Rule(bool),
    "data.img_size": POSITIVE_INT,
    "data.batch_size": POSITIVE_INT,
    "data.num_workers": COUNT,
    "data.split_seed": COUNT,
    "data.val_fraction": Rule(float, 0, 1, open_high=True),
    "data.test_fraction": Rule(float, 0, 1, open_low=True, open_high=True),
    "data.train_per_class": Rule(int, 1, nullable=True),
    "data.pin_memory": Rule(bool),
    "data.skip_corrupt": Rule(bool),
    "trainer.max_epochs": Rule(int, -1),  # -1: no epoch limit (trainer.max_steps decides); 0 is refused below
    "trainer.min_epochs": COUNT,
    "trainer.num_nodes": POSITIVE_INT,
    "trainer.accumulate_grad_batches": POSITIVE_INT,
    "trainer.check_val_every_n_epoch": Rule(int, 1, nullable=True),
    "trainer.log_every_n_steps": POSITIVE_INT,
    "trainer.gradient_clip_val": Rule(float, 0, nullable=True),
    "optim.lr": Rule(float, 0, open_low=True),
    "optim.weight_decay": Rule(float, 0),
    "optim.momentum": Rule(float, 0),
    "optim.lr_base_batch": Rule(int, 1, nullable=True),
    "scheduler.warmup_epochs": Rule(float, 0),
    "scheduler.warmup_lr": Rule(float, 0),
    "scheduler.min_lr": Rule(float, 0),
    "module.label_smoothing": FRACTION,
    "module.compile": Rule(bool),
    "module.mixup.mixup_alpha": Rule(float, 0),
    "module.mixup.cutmix_alpha": Rule(float, 0),
    "module.mixup.prob": Rule(float, 0, 1),
    "module.mixup.switch_prob": Rule(float, 0, 1),
    "model.backbone.patch_size": POSITIVE_INT,
    "model.backbone.embed_dim": POSITIVE_INT,
    "model.backbone.depth": POSITIVE_INT,
    "model.backbone.num_heads": POSITIVE_INT,
    "model.backbone.mlp_ratio": Rule(float, 0, open_low=True),
    "model.backbone.pretrained_head": Rule(bool),
    "model.backbone.dynamic_img_size": Rule(bool),
    **{f"model.backbone.{k}": FRACTION for k in ("drop_rate", "pos_drop_rate", "proj_drop_rate", "attn_drop_rate")},
    "model.backbone.drop_path_rate": FRACTION,
    # slots: the keys their configs ship with
    "model.stem.kernel_size": POSITIVE_INT,
    "model.stem.stride": POSITIVE_INT,
    "model.stem.pool_size": POSITIVE_INT,
    "model.mixer.conv_kernel": POSITIVE_INT,
    "model.mixer.kernel.num_landmarks": POSITIVE_INT,
    "model.mixer.kernel.pinv_iterations": POSITIVE_INT,
    "model.mixer.kernel.residual_kernel": POSITIVE_INT,
    "model.mixer.kernel.k": POSITIVE_INT,
    "model.mixer.kernel.nb_features": Rule(int, 1, nullable=True),
    "model.mixer.kernel.redraw_interval": Rule(int, 0, nullable=True),
    "model.step_size.init": Rule(float),
    "model.step_size.init_std": Rule(float, 0),
    "model.step_size.l2_to_init": Rule(float, 0),
    "model.head.width": Rule(int, 1, nullable=True),
    "model.head.steps": POSITIVE_INT,
    "model.head.drop_rate": FRACTION,
    "model.peft.r": POSITIVE_INT,
    "model.peft.alpha": Rule(float, 0, open_low=True),
    "model.peft.num_tokens": POSITIVE_INT,
    "model.peft.bottleneck": POSITIVE_INT,
    "model.peft.scale": Rule(float),
    "model.peft.dropout": FRACTION,
    "callbacks.model_checkpoint.save_top_k": Rule(int, -1),
    "callbacks.early_stopping.patience": COUNT,
}
PRECISIONS = (  # what Lightning 2.6 accepts
    "64-true", "64", "32-true", "32", "16-mixed", "16", "bf16-mixed", "bf16", "16-true", "bf16-true",
    "transformer-engine", "transformer-engine-float16",
)  # fmt: skip


def check_config(cfg: DictConfig) -> None:
    """Raise `ConfigError` (key, value, what is allowed) for the first value no rule accepts."""
    for key, rule in RULES.items():
        value = OmegaConf.select(cfg, key, default=_ABSENT)
        if value is not _ABSENT and not rule.accepts(value):
            raise ConfigError(f"{key}={value!r} is not allowed: it must be {rule.allowed()}.")
    widths = OmegaConf.select(cfg, "model.stem.widths", default=_ABSENT)
    if widths is not _ABSENT and not (OmegaConf.is_list(widths) and all(POSITIVE_INT.accepts(w) for w in widths)):
        raise ConfigError(f"model.stem.widths={widths!r} is not allowed: it must be a list of integers >= 1.")
    if OmegaConf.select(cfg, "trainer.max_epochs", default=None) == 0:
        raise ConfigError(
            "trainer.max_epochs=0 is not allowed: it must be >= 1, or -1 (no epoch limit) with trainer.max_steps "
            "set and scheduler=none (the cosine schedule is laid out in epochs)."
        )
    precision = OmegaConf.select(cfg, "trainer.precision", default=_ABSENT)
    if precision is not _ABSENT and str(precision) not in PRECISIONS:
        raise ConfigError(f"trainer.precision={precision!r} is not an option. Allowed: {', '.join(PRECISIONS)}.")
    devices = OmegaConf.select(cfg, "trainer.devices", default=_ABSENT)
    if devices is not _ABSENT and not _devices_ok(devices):
        raise ConfigError(
            f"trainer.devices={devices!r} is not allowed: give a number of devices (>= 1), -1 or auto (all of "
            "them), or a list of device indices, e.g. [0,1]."
        )


def _devices_ok(devices: Any) -> bool:
    if isinstance(devices, bool):
        return False
    if isinstance(devices, int):
        return devices >= 1 or devices == -1
    if isinstance(devices, str):
        return devices == "auto" or all(part.strip().isdigit() for part in devices.split(",") if part.strip())
    return OmegaConf.is_list(devices) and all(isinstance(d, int) and d >= 0 for d in devices)


def writable_dir(path: Path) -> bool:
    """Whether `path` is, or can be created as, a directory this process can write a file into — tried, not
    guessed (`os.access` says yes to root on a read-only or virtual file system). Creates the directory."""
    try:
        Path(path).expanduser().mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=Path(path).expanduser()):
            pass
    except OSError:
        return False
    return True
