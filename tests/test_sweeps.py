"""`sweeps/*.yaml` (W&B sweep configs) and `hparams_search=optuna`.

A sweep file is expanded exactly as `wandb agent` expands it (wandb's own `create_sweep_command_args`),
and the resulting command must be `python src/vitlab/cli/train.py <overrides>` with overrides that Hydra
composes. The Optuna search runs two trials on a tiny model and continues its study (a journal file by default,
SQLite by option) with a second command; a third search shows a trial its median pruner stops recorded as pruned.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml

from conftest import ROOT, TINY, compose_cfg, run_cli

pytestmark = pytest.mark.slow  # starts vitlab processes or trains end to end: not in make test-fast

SWEEPS = sorted((ROOT / "sweeps").glob("*.yaml"))


def sample(spec: dict[str, Any], pick: int) -> Any:
    """A value the sweep can produce: the `pick`-th of `values`, or an end of a distribution's range."""
    if "value" in spec:
        return spec["value"]
    if "values" in spec:
        return spec["values"][pick % len(spec["values"])]
    return spec["min"] if pick % 2 == 0 else spec["max"]


def agent_command(sweep: dict[str, Any], pick: int) -> list[str]:
    """The command line `wandb agent` would start for one run (wandb/wandb_agent.py, Agent._command_run)."""
    from wandb.sdk.launch.sweeps.utils import create_sweep_command, create_sweep_command_args

    args = {k: {"value": sample(v, pick)} for k, v in sweep["parameters"].items()}
    macros = create_sweep_command_args({"args": args})
    macros.update(env=["/usr/bin/env"], interpreter=["python"], program=[sweep["program"]])
    command: list[str] = []
    for chunk in create_sweep_command(sweep["command"]):
        chunk = str(chunk)
        command += macros.get(chunk[2:-1], []) if chunk.startswith("${") and chunk.endswith("}") else [chunk]
    return command


def test_there_are_sweeps() -> None:
    assert {p.stem for p in SWEEPS} >= {"digits_lr_wd", "vix_mixers", "ode_transfer"}


@pytest.mark.parametrize("path", SWEEPS, ids=lambda p: p.stem)
def test_sweep_parses_and_its_command_is_valid_vitlab_train_overrides(path: Path) -> None:
    sweep = yaml.safe_load(path.read_text())
    assert sweep["method"] in ("grid", "random", "bayes")
    assert sweep["metric"]["name"].startswith("val/"), "sweeps optimise a validation metric, never test"
    assert (ROOT / sweep["program"]).is_file()
    assert "${args_no_hyphens}" in sweep["command"]
    for pick in range(3):  # different values of every parameter
        command = agent_command(sweep, pick)
        assert command[:3] == ["/usr/bin/env", "python", "src/vitlab/cli/train.py"]
        overrides = command[3:]
        assert all("=" in o and not o.startswith("-") for o in overrides), overrides
        cfg = compose_cfg(overrides)  # raises if any key, group or value is unknown
        assert "wandb" in cfg.logger
        fixed = [o for o in sweep["command"] if o.startswith("tags=")]
        assert not fixed or list(cfg.tags) == fixed[0][len("tags=[") : -1].split(","), cfg.tags
        assert "sweep" in cfg.tags
        for key, spec in sweep["parameters"].items():
            if "/" not in key:  # a plain key: its value reached the config
                node: Any = cfg
                for part in key.split("."):
                    node = node[part]
                assert node == sample(spec, pick), key


# a trial of 3 training batches and 2 validation batches (128 digits: val/acc still tells trials apart): the
# study's bookkeeping is what is tested, not what a trial learns
SHORT = ["+trainer.limit_train_batches=3", "+trainer.limit_val_batches=2", "+trainer.limit_test_batches=1"]


def optuna_args(log_dir: Path, trials: int, *extra: str) -> list[str]:
    return [
        "hparams_search=optuna",
        f"hydra.sweeper.n_trials={trials}",
        "hydra.sweeper.study_name=test_study",
        *TINY,
        *SHORT,
        *extra,
        f"paths.log_dir={log_dir}",
    ]


def load_study(storage: str) -> Any:
    """The study as another worker would open it (vitlab's sweeper: a journal file by default, a URL by option)."""
    import optuna

    from vitlab.training.optuna_pruning import open_storage

    return optuna.load_study(study_name="test_study", storage=open_storage(storage))


def test_optuna_study_of_two_trials_runs_and_continues_in_its_journal_file(tmp_path) -> None:
    run = run_cli("train", optuna_args(tmp_path, 2), tmp_path)
    assert run.returncode == 0, run.stderr[-3000:]
    journal = tmp_path / "optuna" / "test_study.journal"  # the default storage: no database server
    assert journal.is_file() and not list(tmp_path.rglob("*.db"))
    study = load_study(str(journal))
    assert [t.state.name for t in study.trials] == ["COMPLETE", "COMPLETE"]
    results = run.results()
    assert len(results) == 2
    # the objective is val/acc of each trial's own results.json, never test/acc
    assert sorted(t.value for t in study.trials) == pytest.approx(sorted(r["val/acc"] for r in results))
    lrs = {o for r in results for o in r["overrides"] if o.startswith("optim.lr=")}
    assert len(lrs) == 2, [r["overrides"] for r in results]  # the sampler chose two learning rates
    assert {t.params["optim.lr"] for t in study.trials} == {float(o.split("=")[1]) for o in lrs}
    assert all(not any("VITLAB_OPTUNA" in o for o in r["overrides"]) for r in results)  # the trial's id is no override

    run = run_cli("train", optuna_args(tmp_path, 1), tmp_path)  # the same command again: one more trial
    assert run.returncode == 0, run.stderr[-3000:]
    study = load_study(str(journal))
    assert len(study.trials) == 3 and study.trials[2].number == 2
    assert "(2 trials so far)" in run.stderr + run.stdout
    assert set(study.best_params) == {"optim.lr", "optim.weight_decay", "module.label_smoothing"}
    best = (next(tmp_path.glob("multiruns/*/*/optimization_results.yaml"))).read_text()
    assert "best_params" in best


def test_optuna_study_in_sqlite_by_option(tmp_path) -> None:
    storage = f"sqlite:///{tmp_path}/studies/test.db"  # its folder does not exist yet: the sweeper makes it
    run = run_cli("train", optuna_args(tmp_path, 1, f"hydra.sweeper.storage={storage}"), tmp_path)
    assert run.returncode == 0, run.stderr[-3000:]
    assert [t.state.name for t in load_study(storage).trials] == ["COMPLETE"]
    assert not list(tmp_path.rglob("*.journal"))


def test_a_trial_the_median_pruner_stops_is_pruned_not_failed(tmp_path) -> None:
    """The random sampler (seed 6) draws lr 0.01 twice (the same run twice: the same val/acc, never below the
    median), then 1e-9 (a run that learns nothing: by epoch 2 of 4 its val/acc is below the others'). The median
    pruner (after 1 finished trial, from epoch 0) stops that trial before its last epoch: PRUNED in the study,
    "status": "pruned" in its results.json, and the search's exit status 0 (a pruned trial is not a failure)."""
    extra = [
        "trainer.max_epochs=4",
        "hydra.sweeper.params.optim.lr=choice(0.01, 1e-9)",  # the only parameter: the rest of the space fixed
        "hydra.sweeper.params.optim.weight_decay=0.01",
        "hydra.sweeper.params.module.label_smoothing=0.0",
        "hydra.sweeper.sampler.name=random",
        "hydra.sweeper.sampler.seed=6",
        "hydra.sweeper.pruner.name=median",
        "hydra.sweeper.pruner.n_startup_trials=1",
        "hydra.sweeper.pruner.n_warmup_steps=0",
    ]
    args = [a for a in optuna_args(tmp_path, 3, *extra) if a != "trainer.max_epochs=1"]
    run = run_cli("train", args, tmp_path)
    assert run.returncode == 0, run.stderr[-3000:]
    study = load_study(str(tmp_path / "optuna" / "test_study.journal"))
    drawn = [(t.params["optim.lr"], t.state.name) for t in study.trials]
    assert [lr for lr, _ in drawn] == [0.01, 0.01, 1e-9], f"{drawn}: the sampler drew other values than expected"
    assert [state for _, state in drawn] == ["COMPLETE", "COMPLETE", "PRUNED"], drawn
    assert study.trials[0].intermediate_values.keys() == {0, 1, 2, 3}  # val/acc of every epoch reported
    assert max(study.trials[2].intermediate_values) < 3  # stopped before its last epoch
    results = run.results()
    (pruned,) = [r for r in results if "optim.lr=1e-09" in r["overrides"]]
    assert pruned["status"] == "pruned" and "pruner" in pruned["error"] and pruned.get("test/acc") is None
    assert sorted(r["status"] for r in results) == ["ok", "ok", "pruned"]
