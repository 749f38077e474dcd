"""OmegaConf resolvers that vitlab's configs use; registered when a vitlab command starts (no torch import)."""

from __future__ import annotations

import functools
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


def packed_source(root: Any, key: str) -> Any:
    """A key of the data config a packed set was made from (`configs/data/shards.yaml`: img_size, batch_size),
    read from its manifest, so a model sized by `${data.img_size}` gets the source's size unless given."""
    if root in (None, "", "???"):
        raise ConfigError(
            "data.root is not set: data=shards needs data.root=<the directory or URL of a packed set> (written by "
            "`vitlab-data pack data=<config> out=<dir>`)."
        )
    source = _packed_source(str(root))
    if key not in source:
        raise ConfigError(
            f"data.root={root}: the packed set's source config has no {key!r}; give data.{key}=<value> yourself."
        )
    return source[key]


@functools.lru_cache(maxsize=8)
def _packed_source(root: str) -> dict[str, Any]:
    """Read once per process: the resolver runs at every access of `data.img_size`."""
    from vitlab.data.shards.manifest import MANIFEST, parse_manifest
    from vitlab.data.shards.store import ShardStore

    store = ShardStore(root)
    return parse_manifest(store.read_text(MANIFEST), store.root)["source"]


def register_resolvers() -> None:
    if not OmegaConf.has_resolver("vitlab.slurm_devices"):
        OmegaConf.register_new_resolver("vitlab.slurm_devices", slurm_devices)
    if not OmegaConf.has_resolver("vitlab.packed"):
        OmegaConf.register_new_resolver("vitlab.packed", packed_source)


register_resolvers()
