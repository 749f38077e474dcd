"""Types and ranges of the numeric and boolean keys a user sets, checked before anything is built.

Without this, `data.img_size=abc`, `seed=1.5` or `trainer.max_epochs=-3` reach torch or Lightning and end
in a traceback that never names the key. Each rule says what is allowed; a key the composed config does not
have (another data set, another optimiser) is not checked. `check_config` also runs the sibling checks: the
shapes of list-valued keys (`validate_lists`), callback options (`validate_callbacks`) and names that reach timm
or Lightning as strings (`validate_names`).
"""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from vitlab.cli.rules import COUNT, FRACTION, POSITIVE_INT, Rule, check_optim
from vitlab.cli.validate_callbacks import CALLBACK_RULES, check_callbacks
from vitlab.cli.validate_lists import check_lists
from vitlab.cli.validate_names import check_names
from vitlab.errors import ConfigError

__all__ = ["RULES", "Rule", "check_config", "writable_dir"]
_ABSENT = object()

RULES: dict[str, Rule] = {
    "seed": Rule(int, 0, 2**32 - 1),
    "train": Rule(bool),
    "test": Rule(bool),
    "eval.figures": Rule(bool),
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
    "model.grad_checkpointing": Rule(bool),
    "optim.lr": Rule(float, 0, open_low=True),
    "optim.weight_decay": Rule(float, 0),
    "optim.momentum": Rule(float, 0),
    "optim.lr_base_batch": Rule(int, 1, nullable=True),
    "scheduler.warmup_epochs": Rule(float, 0),
    "scheduler.warmup_lr": Rule(float, 0),
    "scheduler.min_lr": Rule(float, 0),
    # timm create_scheduler_v2 options a user may add (+scheduler.<key>=...)
    "scheduler.warmup_prefix": Rule(bool),
    "scheduler.decay_epochs": Rule(float, 0, open_low=True, nullable=True),
    "scheduler.decay_rate": Rule(float, 0, open_low=True),
    "scheduler.cooldown_epochs": Rule(float, 0),
    "scheduler.cycle_mul": Rule(float, 0, open_low=True),
    "scheduler.cycle_decay": Rule(float, 0, open_low=True),
    "scheduler.cycle_limit": POSITIVE_INT,
    "scheduler.k_decay": Rule(float, 0, open_low=True),
    "scheduler.noise_pct": Rule(float, 0),
    "scheduler.noise_std": Rule(float, 0),
    "module.label_smoothing": FRACTION,
    "module.compile": Rule(bool),
    "module.mixup.mixup_alpha": Rule(float, 0),
    "module.mixup.cutmix_alpha": Rule(float, 0),
    "module.mixup.prob": Rule(float, 0, 1),
    "module.mixup.switch_prob": Rule(float, 0, 1),
    "data.augment.hflip": Rule(float, 0, 1),  # timm's: a probability
    "data.augment.random_erasing": Rule(float, 0, 1),
    "data.augment.rotate": Rule(float, 0),  # digits': degrees, a fraction of the side
    "data.augment.translate": Rule(float, 0, 1),
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
    **CALLBACK_RULES,
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
    check_lists(cfg)  # a scalar where a list belongs, a list of the wrong length or kind
    check_callbacks(cfg)
    check_names(cfg)  # optimiser, schedule, mixup mode, augmentation strings
    check_optim(cfg)  # optim.layer_decay, optim.layer_decay_min_scale, optim.fused
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
