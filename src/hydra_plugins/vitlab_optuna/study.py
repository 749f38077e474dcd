"""The study's settings checked and built: storage, sampler and pruner (docs/reproduce.md, "Hyper-parameter search").

The default storage is Optuna's journal file (`JournalStorage` on a `JournalFileBackend`): no database server,
appended to under a file lock, so several workers can pull trials from one study later; a URL (`sqlite:///...`,
`postgresql://...`) selects Optuna's RDB storage instead. `check_settings` raises `ConfigError` for anything that
cannot work -- before the storage is opened or any folder is made -- and vitlab.cli.sweep_check calls it before
Hydra starts, so a bad search changes nothing on disk.
"""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any

from hydra_plugins.vitlab_optuna.config import PRUNERS, SAMPLERS
from vitlab.errors import ConfigError

# which options each sampler and pruner takes (the rest of SamplerConf/PrunerConf must stay None)
SAMPLER_OPTIONS = {
    "tpe": ("n_startup_trials", "multivariate"),
    "gp": ("n_startup_trials",),
    "cmaes": ("n_startup_trials",),
    "random": (),
    "grid": (),
}
PRUNER_OPTIONS = {
    "none": (),
    "median": ("n_startup_trials", "n_warmup_steps"),
    "hyperband": ("min_resource", "max_resource", "reduction_factor"),
}
LEAST = {"min_resource": 1, "max_resource": 1, "reduction_factor": 2}  # the rest: at least 0
DIRECTIONS = ("maximize", "minimize")


def check_settings(conf: Any) -> None:
    """Raise `ConfigError` for the first setting of `hydra.sweeper` (resolved) that cannot work."""
    _check_choice(conf.sampler, "sampler", SAMPLERS, SAMPLER_OPTIONS)
    _check_choice(conf.pruner, "pruner", PRUNERS, PRUNER_OPTIONS)
    for key in ("n_trials", "n_jobs"):
        if int(conf[key]) < 1:
            raise ConfigError(f"hydra.sweeper.{key}={conf[key]}: it must be at least 1 (the trials this command runs).")
    check_workers(conf.get("workers"), str(conf.storage or ""))
    if str(conf.direction) not in DIRECTIONS:
        raise ConfigError(
            f"hydra.sweeper.direction={conf.direction} is not a direction. Allowed: {', '.join(DIRECTIONS)}."
        )
    if not conf.study_name:
        raise ConfigError("hydra.sweeper.study_name is empty: name the study (the same name continues it).")
    if not conf.storage:
        raise ConfigError("hydra.sweeper.storage is empty: give a journal file's path or an RDB URL (sqlite:///...).")
    check_storage(str(conf.storage))


def check_workers(workers: Any, storage: str) -> None:
    """`hydra.sweeper.workers`: null (batches of n_jobs) or a whole number >= 1, on a storage every worker's
    process can open -- a file or a database, never SQLite's in-memory database (vitlab_optuna.worker)."""
    if workers is None:
        return
    if isinstance(workers, bool) or not isinstance(workers, int) or workers < 1:
        raise ConfigError(
            f"hydra.sweeper.workers={workers} is not allowed: it must be a whole number of at least 1 (the jobs "
            "launched once, each pulling trials from the study), or null (batches of hydra.sweeper.n_jobs trials)."
        )
    if ":memory:" in storage or storage.rstrip("/") in ("sqlite:", "sqlite://"):
        raise ConfigError(
            f"hydra.sweeper.workers={workers} needs a study that every worker can open, and "
            f"hydra.sweeper.storage={storage} is an in-memory database of one process. Allowed: a journal file's "
            "path (the default, <paths.log_dir>/optuna/<study_name>.journal) or an RDB URL on disk or on a server "
            "(sqlite:///<file>, postgresql://...)."
        )


def _check_choice(node: Any, kind: str, names: tuple[str, ...], options: dict[str, tuple[str, ...]]) -> None:
    name = str(node.name)
    if name not in names:
        raise ConfigError(
            f"hydra.sweeper.{kind}.name={name} is not an Optuna {kind} of vitlab. Allowed: {', '.join(names)}."
        )
    extra = [key for key, value in node.items() if key not in ("name", "seed", *options[name]) and value is not None]
    if extra:
        allowed = ", ".join(options[name]) or "none"
        raise ConfigError(
            f"hydra.sweeper.{kind}.{extra[0]}={node[extra[0]]} does not apply to the {name} {kind}, so it would be "
            f"ignored; leave it out (null). The {name} {kind}'s options: {allowed}."
        )
    for key in options[name]:
        value, least = node.get(key), LEAST.get(key, 0)
        if isinstance(value, (int, float)) and not isinstance(value, bool) and value < least:
            raise ConfigError(f"hydra.sweeper.{kind}.{key}={value} is out of range: it must be at least {least}.")


def storage_file(storage: str) -> Path | None:
    """The file a storage lives in: the journal file, or SQLite's database (None for a database server)."""
    if "://" not in storage:
        return Path(storage).expanduser()
    if storage.startswith("sqlite:///"):
        return Path(storage[len("sqlite:///") :]).expanduser()
    return None


def check_storage(storage: str) -> None:
    """The storage's file can be created or appended to -- tried without changing anything on disk."""
    path = storage_file(storage)
    if path is None:
        return
    problem = None
    if path.exists():
        if not path.is_file():
            problem = "it is not a file"
        else:
            try:
                with path.open("ab"):
                    pass
            except OSError as exc:
                problem = exc.strerror or str(exc)
    else:
        existing = next(p for p in [path.parent, *path.parent.parents] if p.exists())
        try:
            if not existing.is_dir():
                raise NotADirectoryError(f"{existing} is a file")
            with tempfile.TemporaryFile(dir=existing):
                pass
        except OSError as exc:
            problem = f"{existing}: {exc.strerror or exc}"
    if problem:
        raise ConfigError(
            f"hydra.sweeper.storage={storage} cannot be written ({problem}): the study could not record a trial. "
            "Choose a writable place: another paths.log_dir, or hydra.sweeper.storage=<path>.journal (or an RDB URL)."
        )


def open_storage(storage: str) -> Any:
    """Optuna's storage (vitlab.training.optuna_pruning.open_storage, as the trials' runs open it), its folder made
    first: neither the journal nor SQLite makes it."""
    from vitlab.training.optuna_pruning import open_storage as open_optuna_storage

    path = storage_file(storage)
    if path is not None:
        path.parent.mkdir(parents=True, exist_ok=True)
    return open_optuna_storage(storage)


def _options(node: Any, names: tuple[str, ...]) -> dict[str, Any]:
    return {key: node[key] for key in names if node.get(key) is not None}


def make_sampler(conf: Any, grid_values: dict[str, list[Any]] | None = None) -> Any:
    """The sampler `hydra.sweeper.sampler` names; `grid_values` (space.grid) for the grid sampler."""
    import optuna

    name, seed = str(conf.name), conf.get("seed")
    options = _options(conf, SAMPLER_OPTIONS[name])
    if name == "tpe":
        return optuna.samplers.TPESampler(seed=seed, **options)
    if name == "gp":
        return optuna.samplers.GPSampler(seed=seed, **options)
    if name == "cmaes":
        return optuna.samplers.CmaEsSampler(seed=seed, **options)
    if name == "random":
        return optuna.samplers.RandomSampler(seed=seed)
    return optuna.samplers.GridSampler(grid_values or {}, seed=seed)


def pruner_spec(conf: Any) -> dict[str, Any]:
    """`hydra.sweeper.pruner` as the trials' runs get it (vitlab.training.optuna_pruning.make_pruner builds it)."""
    return {"name": str(conf.name), "options": _options(conf, PRUNER_OPTIONS[str(conf.name)])}
