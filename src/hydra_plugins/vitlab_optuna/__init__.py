"""vitlab's Hydra sweeper on Optuna's ask-and-tell API (`hydra/sweeper=vitlab_optuna`, set by `hparams_search=optuna`).

Hydra finds plugins in the `hydra_plugins` namespace package; this one is shipped by vitlab's wheel so that the
search runs on a current Optuna (>= 4) without hydra-optuna-sweeper, which pins Optuna 2 (docs/reproduce.md,
"Hyper-parameter search"). `config` registers the sweeper's config (no Optuna import), `space` turns Hydra's
sweep grammar into Optuna distributions, `study` opens the storage and builds the sampler and pruner, `sweeper`
asks, launches and tells, and `worker` is a job that pulls trials from the study itself (`hydra.sweeper.workers`).
"""
