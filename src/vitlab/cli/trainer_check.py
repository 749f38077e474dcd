"""Trainer settings that contradict each other, refused in the launching process before any other one starts.

Lightning checks `accelerator`, `strategy` and `devices` one at a time, and only as the Trainer is built:
`trainer=fsdp` with a preset that selects the CPU (`debug=...`, a `local` config, `trainer.accelerator=cpu`) ended
in a ValueError traceback, `trainer=ddp` on the CPU in a TypeError about `devices=-1`, and a global batch that the
processes cannot share evenly, or an optimiser option timm refuses, was found by every process after all of them
had started (printed once each). Here each is one paragraph, said once: it names the settings, where they came
from, and the way out.
"""

from __future__ import annotations

from typing import Any

from omegaconf import DictConfig, OmegaConf

from vitlab.errors import ConfigError

ACCELERATORS = ("auto", "cpu", "gpu", "cuda", "mps", "tpu")
GPU_ONLY_STRATEGIES = ("fsdp", "deepspeed")  # prefixes: fsdp_cpu_offload, deepspeed_stage_3, ...


def check_trainer(cfg: DictConfig) -> None:
    """Raise `ConfigError` for an unknown accelerator or strategy, or a strategy/devices the accelerator cannot
    run. Needs only the config (and whether this machine has a GPU, for `accelerator=auto`)."""
    trainer = cfg.get("trainer") or {}
    accelerator = str(trainer.get("accelerator", "auto"))
    strategy = trainer.get("strategy", "auto")
    devices = trainer.get("devices", "auto")
    if accelerator not in ACCELERATORS:
        raise ConfigError(f"trainer.accelerator={accelerator} is not an option. Allowed: {', '.join(ACCELERATORS)}.")
    if isinstance(strategy, str) and strategy not in _strategies():
        raise ConfigError(
            f"trainer.strategy={strategy} is not an option. Allowed: auto, {', '.join(_strategies()[1:])} "
            "(or trainer=ddp, trainer=fsdp, trainer=ddp_cpu)."
        )
    if not _runs_on_cpu(accelerator):
        return

    def cpu() -> str:  # composes to find where the setting came from: only on the error path
        return f"trainer.accelerator={accelerator}{_origin(cfg, 'accelerator')}"

    if isinstance(strategy, str) and strategy.startswith(GPU_ONLY_STRATEGIES):
        raise ConfigError(
            f"trainer.strategy={strategy}{_origin(cfg, 'strategy')} shards the model across GPUs, but {cpu()}: it "
            "cannot run on the CPU. For several processes on the CPU use trainer=ddp_cpu; for "
            f"{strategy} run on GPU nodes without the CPU setting."
        )
    if devices == -1 or OmegaConf.is_list(devices) or (isinstance(devices, str) and "," in devices):
        raise ConfigError(
            f"trainer.devices={_text(devices)}{_origin(cfg, 'devices')} counts GPUs (-1: all of them, or a list "
            f"of GPU indices), but {cpu()}. Give a number of CPU processes instead: trainer=ddp_cpu (2 processes) "
            "or trainer.devices=<n>; or run on a GPU node without the CPU setting."
        )


def check_batch_split(cfg: DictConfig, world_size: int) -> None:
    """The global batch (`data.batch_size`) must divide evenly among the `world_size` processes; said here, in
    the launching process, not by every process once they have started."""
    batch = OmegaConf.select(cfg, "data.batch_size", default=None)
    if isinstance(batch, int) and world_size > 1 and batch % world_size:
        trainer = cfg.trainer
        low, high = batch // world_size * world_size, (batch // world_size + 1) * world_size
        raise ConfigError(
            f"data.batch_size={batch} is the global batch size and must be divisible by the number of processes, "
            f"{world_size} (trainer.devices={_text(trainer.get('devices'))} x trainer.num_nodes="
            f"{trainer.get('num_nodes', 1)}). Use data.batch_size={low or high} or {high}."
        )


def check_optimisation(module: Any, trainer: Any, steps: int | None) -> None:
    """Build the optimiser and the schedule once and drop them, when Lightning is about to start more processes:
    each would build them in `configure_optimizers` after all had started, and print the same error once each."""
    if trainer.world_size < 2 or not hasattr(module, "hparams"):
        return
    from vitlab.training.optim import build_optimizer, build_scheduler

    optimizer = build_optimizer(module.model, module.hparams.optim)
    if module.hparams.get("scheduler"):
        build_scheduler(optimizer, module.hparams.scheduler, trainer.max_epochs, steps or 1)


def _strategies() -> list[str]:
    from pytorch_lightning.strategies import StrategyRegistry

    return ["auto", *StrategyRegistry.available_strategies()]


def _runs_on_cpu(accelerator: str) -> bool:
    if accelerator == "cpu":
        return True
    if accelerator != "auto":
        return False
    import torch

    mps = getattr(torch.backends, "mps", None)
    return not torch.cuda.is_available() and not (mps is not None and mps.is_available())


def _text(value: Any) -> str:
    return str(OmegaConf.to_container(value) if OmegaConf.is_list(value) else value)


def _origin(cfg: DictConfig, key: str) -> str:
    """Where `trainer.<key>` came from: the command line, or the config that set it (debug, local, experiment,
    trainer), found by composing each alone. Only on the error path: it costs a few compositions."""
    from hydra.core.hydra_config import HydraConfig

    hydra = cfg.get("hydra") if "hydra" in cfg else (HydraConfig.get() if HydraConfig.initialized() else None)
    if hydra is None:
        return ""
    if any(o.lstrip("+").startswith(f"trainer.{key}=") for o in OmegaConf.select(hydra, "overrides.task") or []):
        return " (set on the command line)"
    if key == "accelerator" and str(cfg.trainer.get("accelerator")) == "auto":
        return " (auto: this machine has no GPU)"
    search = [o for o in OmegaConf.select(hydra, "overrides.hydra") or [] if o.startswith("hydra.searchpath")]
    value, choices = cfg.trainer.get(key), hydra.runtime.choices
    for group in ("debug", "local", "experiment"):  # applied after trainer=... (configs/train.yaml)
        choice = choices.get(group)
        if choice and _value(search, key, f"{group}={choice}") == value != _value(search, key, f"~{group}"):
            return f" (set by {group}={choice})"
    choice = choices.get("trainer")
    return f" (from trainer={choice})" if choice and _value(search, key, f"trainer={choice}") == value else ""


def _value(search: list[str], key: str, *overrides: str) -> Any:
    """`trainer.<key>` as the packaged configs (and a --config-dir's) compose it with `overrides` alone."""
    from vitlab.compose import compose_config

    try:
        return OmegaConf.select(compose_config("train", [*search, *overrides]), f"trainer.{key}")
    except Exception:  # only the wording of a message is at stake
        return _value
