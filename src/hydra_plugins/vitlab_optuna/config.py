"""The sweeper's config, registered as `hydra/sweeper=vitlab_optuna` (Hydra imports every module of a plugin
package when it scans for plugins, so registering here is enough). No Optuna import: a checkout without the
`sweep` extra still composes, and vitlab.extras names the extra before anything runs.

Sampler and pruner are plain nodes with a `name` and the options of the samplers and pruners that have them;
an option left at None is Optuna's default, and an option set for a sampler or pruner without it is refused
(vitlab_optuna.study), never ignored. Their names are not config groups: hydra-optuna-sweeper's groups
(`hydra/sweeper/sampler=tpe`) would collide with this plugin's where both are installed.

No `from __future__ import annotations`: Hydra's plugin scan runs this module before it is in sys.modules,
where dataclasses cannot look string annotations up.
"""

from dataclasses import dataclass, field
from typing import Any

from hydra.core.config_store import ConfigStore

SAMPLERS = ("tpe", "gp", "cmaes", "random", "grid")
PRUNERS = ("none", "median", "hyperband")


@dataclass
class SamplerConf:
    name: str = "tpe"  # one of SAMPLERS
    seed: int | None = None
    n_startup_trials: int | None = None  # tpe, gp, cmaes: random trials before the model is used
    multivariate: bool | None = None  # tpe: model the parameters jointly


@dataclass
class PrunerConf:
    name: str = "none"  # one of PRUNERS
    n_startup_trials: int | None = None  # median: trials that finish before any is pruned
    n_warmup_steps: int | None = None  # median: epochs of each trial before it can be pruned
    min_resource: int | None = None  # hyperband: epochs before the first cut
    max_resource: int | None = None  # hyperband: the epochs of a full trial (Optuna's default "auto")
    reduction_factor: int | None = None  # hyperband: 1/reduction_factor of the trials go on at each rung


@dataclass
class VitlabOptunaSweeperConf:
    _target_: str = "hydra_plugins.vitlab_optuna.sweeper.VitlabOptunaSweeper"
    study_name: str | None = None
    # a file path: Optuna's journal file (several workers may share it); a URL (sqlite:///..., postgresql://...):
    # Optuna's RDB storage
    storage: str | None = None
    direction: str = "maximize"
    n_trials: int = 20
    n_jobs: int = 1  # trials asked for and launched together (one batch of the launcher)
    # N: launch N jobs once, each pulling trials from the study until n_trials are started (vitlab_optuna.worker);
    # null: batches of n_jobs. Any, not int: a bad value is vitlab's one paragraph (study.check_settings)
    workers: Any = None
    sampler: SamplerConf = field(default_factory=SamplerConf)
    pruner: PrunerConf = field(default_factory=PrunerConf)
    params: dict[str, Any] = field(default_factory=dict)  # `<key>: <Hydra sweep>`, e.g. tag(log, interval(1e-4, 1e-2))


ConfigStore.instance().store(
    group="hydra/sweeper", name="vitlab_optuna", node=VitlabOptunaSweeperConf, provider="vitlab"
)
