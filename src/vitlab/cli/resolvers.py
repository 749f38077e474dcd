"""OmegaConf resolvers that vitlab's configs use; registered when a vitlab command starts (no torch import)."""

from __future__ import annotations

from typing import Any

from omegaconf import OmegaConf

from vitlab.errors import ConfigError


def slurm_devices(devices: Any) -> int:
    """`trainer.devices` as a SLURM task/GPU count. SLURM needs a number when the job is submitted, before any
    process can ask how many GPUs a node has, so -1 / auto (Lightning's "all of them") cannot be resolved."""
    if isinstance(devices, int) and not isinstance(devices, bool) and devices >= 1:
        return devices
    if isinstance(devices, str) and devices.strip().isdigit() and int(devices) >= 1:
        return int(devices)
    raise ConfigError(
        f"trainer.devices={devices!r} cannot size a SLURM job: hydra.launcher.tasks_per_node and gpus_per_node "
        "need the number of GPUs per node when the job is submitted. Give it, e.g. trainer.devices=8 (and "
        "trainer.num_nodes=N); -1 and auto only work when Lightning starts the processes itself."
    )


def register_resolvers() -> None:
    if not OmegaConf.has_resolver("vitlab.slurm_devices"):
        OmegaConf.register_new_resolver("vitlab.slurm_devices", slurm_devices)


register_resolvers()
