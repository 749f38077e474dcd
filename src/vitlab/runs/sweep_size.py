"""How many jobs a Hydra multirun will write, from its `multirun.yaml`: the `pending` rows of `vitlab-sweep status`."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path


def numbered_jobs(root: Path, sweep: Path) -> list[str]:
    """The job folders a multirun with Hydra's numbered sub-folders will write, from its `multirun.yaml`; []
    when its size is not known cheaply (other sub-folder names, a sweep over an interval or a glob)."""
    import yaml

    try:
        hydra = (yaml.safe_load((sweep / "multirun.yaml").read_text()) or {}).get("hydra") or {}
    except (OSError, yaml.YAMLError):
        return []
    if str((hydra.get("sweep") or {}).get("subdir")) != "${hydra.job.num}":
        return []
    sweeper = hydra.get("sweeper") or {}
    if "optuna" in str(sweeper.get("_target_", "")).lower():
        size = sweeper.get("n_trials") if isinstance(sweeper.get("n_trials"), int) else None
    else:
        size = sweep_size([str(o) for o in (hydra.get("overrides") or {}).get("task") or []])
    prefix = sweep.relative_to(root).as_posix()
    return [f"{i}" if prefix == "." else f"{prefix}/{i}" for i in range(size or 0)]


def sweep_size(overrides: Sequence[str]) -> int | None:
    """How many jobs Hydra's basic sweeper makes of these overrides (the product of each sweep's values)."""
    from hydra.core.override_parser.overrides_parser import OverridesParser

    size = 1
    try:
        for override in OverridesParser.create().parse_overrides(list(overrides)):
            if override.is_sweep_override():
                if not override.is_discrete_sweep():
                    return None
                size *= len(list(override.sweep_string_iterator()))
    except Exception:  # Hydra's grammar or a glob it cannot expand without the config
        return None
    return size
