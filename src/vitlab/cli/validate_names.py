"""Names that reach timm or Lightning as strings (optimiser, schedule, mixup mode, augmentation strings), checked
against what they accept before anything is built, with the closest valid name suggested.

`optim.opt=adamww` or `scheduler.sched=cosinee` otherwise fail only after the data and the model are built (or,
for the schedule, with a bare `ValueError` traceback), and `module.mixup.mode=bogus` is silently taken as
`batch`. A group picked on the command line (`scheduler=cosinee`) is Hydra's: it lists the options itself.
"""

from __future__ import annotations

from typing import Any

from omegaconf import DictConfig, OmegaConf

from vitlab.cli.rules import is_one_of, refuse_name
from vitlab.data.augment_grammar import check_augment_string, check_color_jitter
from vitlab.errors import ConfigError

_ABSENT = object()
# timm 1.0 `create_scheduler_v2`: the schedules it builds stepped per update (plateau needs per-epoch steps and a
# metric; `none` is `scheduler=none` here)
SCHEDULES = ("cosine", "tanh", "step", "multistep", "poly", "wsd", "rsqrt", "constant")
DECAY_FNS = ("linear", "1-sqrt", "cosine", "power", "exp")  # timm's WSDLRScheduler
CHOICES: dict[str, tuple[Any, ...]] = {
    "module.mixup.mode": ("batch", "pair", "elem"),  # timm Mixup
    "scheduler.decay_fn": (None, *DECAY_FNS),
    "trainer.gradient_clip_algorithm": ("norm", "value"),
    "eval.tta": ("none", "flip", "multicrop"),  # vitlab.analysis.tta.TTA_MODES (not imported here: it loads torch)
}


def optimizer_names() -> list[str]:
    """timm's registered optimisers (imported here, not at start-up: `--help` must not import torch)."""
    from timm.optim import list_optimizers

    return list(list_optimizers())


def check_optimizer(value: Any) -> None:
    """`optim.opt`: a timm optimiser name, optionally `lookahead_<name>`, as `create_optimizer_v2` parses it."""
    names = optimizer_names()
    name = value.lower().removeprefix("lookahead_") if isinstance(value, str) else None
    if name in names:
        return
    listed = (
        f"a timm optimiser name, e.g. adamw, sgd, lamb, lion, adan ({len(names)} in timm.optim.list_optimizers()), "
    )
    raise refuse_name("optim.opt", value, names, listed=listed + "optionally prefixed lookahead_")


def check_schedule(value: Any) -> None:
    """`scheduler.sched`: a timm schedule built per optimiser update."""
    if is_one_of(value, SCHEDULES):
        return
    if value in (None, "none"):
        raise ConfigError(
            f"scheduler.sched={value!r} is not an option: for a constant learning rate use scheduler=none (no node); "
            f"else one of {', '.join(SCHEDULES)}."
        )
    if value == "plateau":
        raise ConfigError(
            "scheduler.sched='plateau' is not an option: vitlab steps the schedule every optimiser update, which "
            f"timm's plateau schedule does not support. Allowed: {', '.join(SCHEDULES)}."
        )
    raise refuse_name("scheduler.sched", value, SCHEDULES)


def check_names(cfg: DictConfig) -> None:
    """Raise `ConfigError` (key, value, the allowed names, the closest one) for the first name no option has."""
    opt = OmegaConf.select(cfg, "optim.opt", default=_ABSENT)
    if opt is not _ABSENT:
        check_optimizer(opt)
    sched = OmegaConf.select(cfg, "scheduler.sched", default=_ABSENT)
    if sched is not _ABSENT:
        check_schedule(sched)
    for key, allowed in CHOICES.items():
        value = OmegaConf.select(cfg, key, default=_ABSENT)
        if value is not _ABSENT and not is_one_of(value, allowed):
            raise refuse_name(key, value, allowed)
    augment = OmegaConf.select(cfg, "data.augment", default=None)
    if OmegaConf.is_dict(augment):  # timm's keys (natural images); digits has its own
        check_augment_string("data.augment.randaugment", augment.get("randaugment"))
        check_color_jitter("data.augment.color_jitter", augment.get("color_jitter"))
