"""vitlab's Optuna sweeper (hydra_plugins.vitlab_optuna) piece by piece, in-process and fast: Hydra finds it, the
sweep grammar becomes the Optuna distributions docs/reproduce.md lists, each sampler and pruner name builds that
Optuna class with its options, a path is a journal file and a URL an RDB storage, and a finished job becomes the
trial state the study is told. The searches themselves run in tests/test_sweeps.py; refusals in
tests/test_bad_launches.py.
"""

from __future__ import annotations

import json
from types import SimpleNamespace

import optuna
import pytest
from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.core.utils import JobStatus
from omegaconf import OmegaConf
from optuna.distributions import CategoricalDistribution, FloatDistribution, IntDistribution

from conftest import compose_cfg
from hydra_plugins.vitlab_optuna import space, study
from hydra_plugins.vitlab_optuna.config import PrunerConf, SamplerConf
from hydra_plugins.vitlab_optuna.sweeper import ENV_OVERRIDE, outcome
from hydra_plugins.vitlab_optuna.worker import trial_overrides
from vitlab.training.optuna_pruning import Pruned, make_pruner, open_storage


def test_hydra_finds_the_sweeper_and_hparams_search_selects_it() -> None:
    from hydra.core.plugins import Plugins
    from hydra.plugins.sweeper import Sweeper

    found = {f"{c.__module__}.{c.__name__}" for c in Plugins.instance().discover(Sweeper)}  # by name: a scan re-runs it
    assert "hydra_plugins.vitlab_optuna.sweeper.VitlabOptunaSweeper" in found
    sweeper = compose_cfg(["hparams_search=optuna"]).hydra.sweeper
    assert sweeper._target_ == "hydra_plugins.vitlab_optuna.sweeper.VitlabOptunaSweeper"
    assert sweeper.storage.endswith("/optuna/train_digits.journal")  # the default: a journal file, named by the study


FORMS = {
    "interval": ("x=interval(0.1, 0.5)", FloatDistribution(0.1, 0.5)),
    "int_bounds_interval": ("x=interval(1, 4)", FloatDistribution(1.0, 4.0)),  # Hydra reads the bounds as floats
    "log_interval": ("x=tag(log, interval(1e-4, 1e-2))", FloatDistribution(1e-4, 1e-2, log=True)),
    "range": ("x=range(8, 64, step=8)", IntDistribution(8, 56, step=8)),  # as Hydra's range: 64 left out
    "range_uneven": ("x=range(1, 10, step=4)", IntDistribution(1, 9, step=4)),
    "float_range": ("x=range(0.1, 0.5, step=0.1)", FloatDistribution(0.1, 0.4, step=0.1)),
    "choice": ("x=choice(nystrom, performer)", CategoricalDistribution(["nystrom", "performer"])),
    "numeric_choice": ("x=choice(0.0, 0.1)", CategoricalDistribution([0.0, 0.1])),
    "shuffled_range": ("x=shuffle(range(1, 3))", None),
}


@pytest.mark.parametrize(("text", "expected"), FORMS.values(), ids=FORMS.keys())
def test_each_form_of_the_grammar_becomes_its_optuna_distribution(text: str, expected) -> None:
    distributions, fixed = space.parse_space([(text, "the command line")])
    assert fixed == {}
    if expected is None:  # a shuffled range: its values to choose from
        assert isinstance(distributions["x"], CategoricalDistribution)
        assert sorted(distributions["x"].choices) == [1, 2]
    else:
        assert distributions == {"x": expected}


def test_a_plain_value_is_fixed_and_a_later_key_wins() -> None:
    specs = [("optim.lr=interval(1e-4, 1e-2)", "hydra.sweeper.params"), ("seed=3", "the command line")]
    specs.append(("optim.lr=0.001", "the command line"))  # the command line fixes what the config would search
    assert space.parse_space(specs) == ({}, {"seed": "3", "optim.lr": "0.001"})


def test_the_grid_sampler_gets_every_value_of_choices_and_ranges() -> None:
    distributions, _ = space.parse_space([("a=choice(x, y)", "c"), ("b=range(1, 7, step=2)", "c")])
    assert space.grid(distributions) == {"a": ["x", "y"], "b": [1, 3, 5]}


SAMPLERS = {
    "tpe": ({"n_startup_trials": 3}, optuna.samplers.TPESampler, {"_n_startup_trials": 3}),
    "gp": ({"n_startup_trials": 4}, optuna.samplers.GPSampler, {"_n_startup_trials": 4}),
    "cmaes": ({"n_startup_trials": 2}, optuna.samplers.CmaEsSampler, {"_n_startup_trials": 2}),
    "random": ({}, optuna.samplers.RandomSampler, {}),
    "grid": ({}, optuna.samplers.GridSampler, {"_search_space": {"a": [1, 2]}}),
}


@pytest.mark.parametrize(("name", "options", "cls", "attrs"), [(k, *v) for k, v in SAMPLERS.items()], ids=SAMPLERS)
def test_each_sampler_name_builds_that_sampler_with_its_options(name: str, options, cls, attrs) -> None:
    conf = OmegaConf.structured(SamplerConf(name=name, seed=7, **options))
    study.check_settings(settings(sampler=conf))
    sampler = study.make_sampler(conf, {"a": [1, 2]})
    assert type(sampler) is cls
    for attr, value in attrs.items():
        assert getattr(sampler, attr) == value


PRUNERS = {
    "none": ({}, optuna.pruners.NopPruner, {}),
    "median": ({"n_startup_trials": 1, "n_warmup_steps": 2}, optuna.pruners.MedianPruner, {"_n_warmup_steps": 2}),
    "hyperband": ({"min_resource": 2, "reduction_factor": 4}, optuna.pruners.HyperbandPruner, {"_min_resource": 2}),
}


@pytest.mark.parametrize(("name", "options", "cls", "attrs"), [(k, *v) for k, v in PRUNERS.items()], ids=PRUNERS)
def test_each_pruner_name_builds_that_pruner_with_its_options(name: str, options, cls, attrs) -> None:
    conf = OmegaConf.structured(PrunerConf(name=name, **options))
    study.check_settings(settings(pruner=conf))
    spec = study.pruner_spec(conf)
    assert spec == {"name": name, "options": options}  # what a trial's run gets, through JSON
    pruner = make_pruner(**json.loads(json.dumps(spec)))
    assert type(pruner) is cls
    for attr, value in attrs.items():
        assert getattr(pruner, attr) == value


def settings(**changes) -> object:
    base = OmegaConf.structured(
        {"sampler": SamplerConf(), "pruner": PrunerConf(), "n_trials": 1, "n_jobs": 1, "direction": "maximize"}
    )
    base.update(study_name="s", storage="/tmp/vitlab-unused.journal")  # never written: only its folder is tried
    for key, value in changes.items():
        base[key] = value
    return base


def test_a_path_is_a_journal_file_and_a_url_an_rdb_storage(tmp_path) -> None:
    journal = study.open_storage(str(tmp_path / "new" / "s.journal"))  # the folder is made
    assert isinstance(journal, optuna.storages.JournalStorage) and (tmp_path / "new").is_dir()
    rdb = study.open_storage(f"sqlite:///{tmp_path}/db/s.db")
    assert isinstance(rdb, optuna.storages.RDBStorage) and (tmp_path / "db" / "s.db").is_file()
    assert isinstance(open_storage(str(tmp_path / "new" / "s.journal")), optuna.storages.JournalStorage)


def job(status: JobStatus, value: object) -> SimpleNamespace:
    return SimpleNamespace(status=status, return_value=value)


@pytest.mark.parametrize(
    ("ret", "state", "value"),
    [
        (job(JobStatus.COMPLETED, 0.75), "COMPLETE", 0.75),
        (job(JobStatus.COMPLETED, Pruned("pruned after epoch 1")), "PRUNED", None),
        (job(JobStatus.COMPLETED, None), "FAIL", None),  # vitlab-train's failed run returns no metric
        (job(JobStatus.COMPLETED, float("nan")), "FAIL", None),
        (job(JobStatus.FAILED, None), "FAIL", None),
    ],
    ids=["metric", "pruned", "failed_run", "nan", "job_raised"],
)
def test_a_finished_job_becomes_the_state_its_trial_is_told(ret, state: str, value) -> None:
    assert outcome(ret) == (optuna.trial.TrialState[state], value)


def test_a_trial_run_gets_its_study_and_number_as_one_hydra_env_override(tmp_path) -> None:
    """The sweeper's overrides of one trial: its sampled values, the fixed ones, and the trial's identity as
    `hydra.job.env_set` (not a task override: not in the run's overrides), parsed back by Hydra as sent."""
    store = study.open_storage(str(tmp_path / "o'dd" / "s.journal"))  # a quote in the path survives
    the_study = optuna.create_study(study_name="s", storage=store)
    trial = the_study.ask(
        {"optim.lr": FloatDistribution(1e-4, 1e-2, log=True), "flag": CategoricalDistribution([True])}
    )
    job_spec = {"storage": str(tmp_path / "o'dd" / "s.journal"), "study": "s", "pruner": {"name": "none"}}
    overrides = trial_overrides(trial, {"seed": "3"}, {**job_spec, "monitor": "val/acc"})  # batches and workers
    assert overrides[:3] == [f"optim.lr={trial.params['optim.lr']}", "flag=true", "seed=3"]
    parsed = OverridesParser.create().parse_override(overrides[3])
    assert overrides[3].startswith(ENV_OVERRIDE) and parsed.is_hydra_override()
    assert json.loads(parsed.value()) == {**job_spec, "monitor": "val/acc", "trial": 0}


def test_an_old_sqlite_study_beside_the_journal_is_named(tmp_path, caplog) -> None:
    from hydra_plugins.vitlab_optuna.sweeper import _say_where_an_old_study_is

    journal = tmp_path / "optuna" / "s.journal"
    journal.parent.mkdir()
    _say_where_an_old_study_is(str(journal))
    assert not caplog.records  # nothing to say
    (tmp_path / "optuna" / "s.db").write_bytes(b"")
    _say_where_an_old_study_is(str(journal))
    assert "optuna storage upgrade --storage sqlite:///" in caplog.text and not journal.exists()
