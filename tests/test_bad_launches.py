"""Launch-level mistakes end in one paragraph before anything starts: a SLURM launcher where SLURM is not
installed, trainer settings that contradict each other, a global batch the processes cannot share, an Optuna
search space that cannot be sampled or composed. And a failed Optuna trial is FAIL in its study, never RUNNING.

In-process (the checks themselves, on configs composed as the CLI composes them); one `vitlab-train` process per
class where only a process shows it (exit code, what is printed, how often, how fast), marked slow.
"""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import pytest
from omegaconf import OmegaConf, open_dict

from conftest import TINY, compose_cfg, run_cli
from vitlab.cli.launcher_check import check_launcher
from vitlab.cli.sweep_check import check_search_space, sweeper_params_as_overrides
from vitlab.cli.trainer_check import check_batch_split, check_trainer
from vitlab.errors import ConfigError


def one_paragraph(text: str) -> None:
    assert "\n" not in text.strip() and "Traceback" not in text, text


# --- a SLURM launcher on a machine without SLURM -------------------------------------------------------------


def path_with(tmp_path: Path, *tools: str) -> str:
    """A PATH holding only fake `tools` (nothing is ever run: the check only looks them up)."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir(exist_ok=True)
    for tool in tools:
        (bin_dir / tool).write_text("#!/bin/sh\nexit 1\n")
        (bin_dir / tool).chmod(0o755)
    return str(bin_dir)


SLURM_SWEEPS = {
    "hydra_launcher": ["-m", "hydra/launcher=submitit_slurm", "seed=0,1"],
    "local_slurm_example": ["-m", "local=slurm_example", "trainer=ddp", "trainer.devices=2", "seed=0,1"],
}


@pytest.mark.parametrize("argv", SLURM_SWEEPS.values(), ids=SLURM_SWEEPS.keys())
def test_a_slurm_launcher_without_sbatch_and_srun_names_both_and_the_way_out(argv, tmp_path, monkeypatch) -> None:
    monkeypatch.setenv("PATH", path_with(tmp_path))
    with pytest.raises(ConfigError) as refused:
        check_launcher("train", argv)
    message = str(refused.value)
    one_paragraph(message)
    assert "sbatch and srun are not on this machine's PATH" in message
    assert "hydra/launcher=submitit_slurm" in message and "login node" in message and "basic launcher" in message
    chosen_by = next(arg for arg in argv if arg.startswith(("local=", "hydra/launcher=")))
    assert message.endswith(f"basic launcher: leave out {chosen_by}."), message
    if "local=slurm_example" in argv:
        assert message.startswith("local=slurm_example (which sets hydra/launcher=submitit_slurm)")


def test_a_machine_config_that_selects_slurm_is_named_with_the_way_out(tmp_path, monkeypatch) -> None:
    """A `configs/local/default.yaml` (loaded without an override) that selects SLURM: `~local` leaves it out."""
    local = tmp_path / "configs" / "local"
    local.mkdir(parents=True)
    example = Path(__file__).resolve().parents[1] / "configs" / "local" / "slurm_example.yaml"
    (local / "default.yaml").write_text(example.read_text())
    monkeypatch.setenv("PATH", path_with(tmp_path, "sbatch"))
    with pytest.raises(ConfigError) as refused:
        check_launcher("train", ["--config-dir", str(tmp_path / "configs"), "-m", "trainer.devices=2", "seed=0,1"])
    assert str(refused.value).startswith("local=default (which sets hydra/launcher=submitit_slurm) submits to SLURM")
    assert str(refused.value).endswith("add ~local to leave out that machine config.")


def test_a_slurm_launcher_names_only_the_missing_tool(tmp_path, monkeypatch) -> None:
    monkeypatch.setenv("PATH", path_with(tmp_path, "sbatch"))
    with pytest.raises(ConfigError, match=r"but srun is not on this machine's PATH"):
        check_launcher("train", SLURM_SWEEPS["hydra_launcher"])
    monkeypatch.setenv("PATH", path_with(tmp_path, "sbatch", "srun"))
    check_launcher("train", SLURM_SWEEPS["local_slurm_example"])  # both there: nothing to say, nothing submitted


def test_a_sweep_override_no_longer_hides_an_unsizable_slurm_job(tmp_path, monkeypatch) -> None:
    """`seed=0,1` made the launcher check's composition fail, and the check silently skipped (Hydra's compose API
    refuses sweeps); one job of the sweep is composed now."""
    monkeypatch.setenv("PATH", path_with(tmp_path, "sbatch", "srun"))
    with pytest.raises(ConfigError, match="cannot size a SLURM job"):
        check_launcher("train", ["-m", "local=slurm_example", "trainer=ddp", "seed=0,1"])


def test_vitlab_train_refuses_a_slurm_sweep_without_slurm_before_writing_anything(
    tmp_path, capsys, monkeypatch
) -> None:
    """vitlab-train's `main` in this process: the refusal comes before Hydra starts, so no process is needed to
    see its exit status and what it prints."""
    from vitlab.cli.train import main

    monkeypatch.setenv("PATH", path_with(tmp_path))
    monkeypatch.chdir(tmp_path)
    args = [*SLURM_SWEEPS["local_slurm_example"], f"paths.log_dir={tmp_path / 'out'}"]
    monkeypatch.setattr("sys.argv", ["vitlab-train", *args])
    with pytest.raises(SystemExit) as refused:
        main()
    err = capsys.readouterr().err
    assert refused.value.code == 2, err
    assert err.count("vitlab: error:") == 1 and "sbatch and srun" in err, err
    one_paragraph(err)
    assert not (tmp_path / "out").exists()


# --- trainer settings that contradict each other --------------------------------------------------------------


def refusal(overrides: list[str]) -> str:
    with pytest.raises(ConfigError) as refused:
        check_trainer(compose_cfg(overrides))
    one_paragraph(str(refused.value))
    return str(refused.value)


def test_fsdp_on_the_cpu_names_both_settings_and_trainer_ddp_cpu() -> None:
    message = refusal(["trainer=fsdp", "trainer.accelerator=cpu"])
    assert message.startswith("trainer.strategy=fsdp (from trainer=fsdp) shards the model across GPUs, but ")
    assert "trainer.accelerator=cpu (set on the command line)" in message and "trainer=ddp_cpu" in message


def test_ddp_on_the_cpu_cannot_count_all_gpus() -> None:
    message = refusal(["trainer=ddp", "trainer.accelerator=cpu"])
    assert message.startswith("trainer.devices=-1 (from trainer=ddp) counts GPUs")
    assert "trainer.accelerator=cpu (set on the command line)" in message and "trainer=ddp_cpu" in message


def test_a_list_of_gpu_indices_on_the_cpu_is_refused() -> None:
    message = refusal(["trainer=cpu", "trainer.devices=[0,1]"])
    assert message.startswith("trainer.devices=[0, 1] (set on the command line) counts GPUs")
    assert "trainer.accelerator=cpu (from trainer=cpu)" in message


def test_a_machine_config_that_selects_the_cpu_is_named(tmp_path) -> None:
    local = tmp_path / "configs" / "local"
    local.mkdir(parents=True)
    (local / "default.yaml").write_text("# @package _global_\ntrainer:\n  accelerator: cpu\n")
    search = f"hydra.searchpath=[file://{tmp_path / 'configs'}]"
    message = refusal(["trainer=fsdp", search])
    assert "trainer.accelerator=cpu (set by local=default)" in message, message


@pytest.mark.parametrize(
    ("overrides", "allowed"),
    [
        (["trainer=ddp", "trainer.strategy=dpp"], "Allowed: auto, ddp, ddp_spawn"),
        (["trainer.accelerator=gpus"], "Allowed: auto, cpu, gpu, cuda, mps, tpu."),
    ],
    ids=["strategy", "accelerator"],
)
def test_an_unknown_strategy_or_accelerator_lists_the_options(overrides: list[str], allowed: str) -> None:
    message = refusal(overrides)
    assert message.startswith(f"trainer.{overrides[-1].split('.')[1].split('=')[0]}=") and allowed in message


@pytest.mark.parametrize("overrides", [["trainer=ddp_cpu"], ["trainer=cpu"], ["trainer=ddp"], ["trainer=fsdp"]])
def test_the_shipped_trainers_pass(overrides: list[str]) -> None:
    check_trainer(compose_cfg(overrides))  # ddp and fsdp select GPUs: no GPU here is build_trainer's to say


def test_a_global_batch_the_processes_cannot_share_is_refused_with_the_nearest_sizes() -> None:
    cfg = compose_cfg(["trainer=ddp_cpu", "data.batch_size=33"])
    with pytest.raises(ConfigError) as refused:
        check_batch_split(cfg, 2)
    assert str(refused.value) == (
        "data.batch_size=33 is the global batch size and must be divisible by the number of processes, 2 "
        "(trainer.devices=2 x trainer.num_nodes=1). Use data.batch_size=32 or 34."
    )
    check_batch_split(cfg, 1)
    with open_dict(cfg):
        cfg.data.batch_size = 32
    check_batch_split(cfg, 2)


def test_an_optimiser_option_timm_refuses_is_found_before_the_processes_start() -> None:
    """Under DDP each process builds the optimiser in `configure_optimizers`, after all have started; the check
    builds it once in the launching process (and not at all for one process, where fit says it once anyway)."""
    from pytorch_lightning.utilities.parsing import AttributeDict
    from torch import nn

    from vitlab.cli.trainer_check import check_optimisation

    optim = {"opt": "adamw", "lr": 1e-3, "foo": 1}
    module = SimpleNamespace(model=nn.Linear(2, 2), hparams=AttributeDict(optim=optim, scheduler=None))
    with pytest.raises(ConfigError, match=r"is not a valid timm optimiser configuration: .*'foo'"):
        check_optimisation(module, SimpleNamespace(world_size=2, max_epochs=1), 10)
    check_optimisation(module, SimpleNamespace(world_size=1, max_epochs=1), 10)
    module.hparams.optim = {"opt": "adamw", "lr": 1e-3}
    module.hparams.scheduler = {"sched": "cosine", "warmup_epochs": 0, "cooldown_epochs": 0, "bogus": 1}
    with pytest.raises(ConfigError, match=r"scheduler=.* has an unknown key"):
        check_optimisation(module, SimpleNamespace(world_size=2, max_epochs=1), 10)


@pytest.mark.slow
def test_a_config_error_under_ddp_cpu_is_said_once_before_the_processes_start(tmp_path) -> None:
    run = run_cli("train", [*TINY, "trainer=ddp_cpu", "data.batch_size=33"], tmp_path)
    assert run.returncode == 2, run.stderr[-2000:]
    output = run.stdout + run.stderr
    assert output.count("data.batch_size=33 is the global batch size") == 1, output[-3000:]
    assert "Initializing distributed" not in output and "Traceback" not in output  # no other process started
    assert output.count("run directory:") == 0  # refused before the run began, in the one launching process
    (result,) = run.results()
    assert result["status"] == "failed" and "data.batch_size=33" in result["error"]


# --- an Optuna search (vitlab's sweeper, hydra/sweeper=vitlab_optuna) ---------------------------------------


def test_the_documented_sweeper_params_form_becomes_a_sweeper_argument() -> None:
    argv = ["-m", "hparams_search=optuna", "hydra.sweeper.params.optim.lr=tag(log, interval(1e-4, 3e-2))"]
    argv += ["+hydra.sweeper.params.seed=choice(0, 1)", "hydra.sweeper.params={}", "hydra.sweeper.n_trials=3"]
    assert sweeper_params_as_overrides(argv) == [
        "-m",
        "hparams_search=optuna",
        "optim.lr=tag(log, interval(1e-4, 3e-2))",
        "seed=choice(0, 1)",
        "hydra.sweeper.params={}",
        "hydra.sweeper.n_trials=3",
    ]
    check_launcher("train", sweeper_params_as_overrides(argv))  # a valid space passes


BAD_SPACES = {
    "log_touching_0": (
        "optim.lr=tag(log, interval(0, 1e-2))",
        "is on a log scale but its low bound is 0: a log interval needs 0 < low <= high",
    ),
    "low_above_high": ("optim.lr=interval(1e-2, 1e-4)", "has low 0.01 > high 0.0001"),
    "empty_interval": ("optim.lr=interval(1e-3, 1e-3)", "is empty (low = high = 0.001)"),
    "int_log_touching_0": ("data.batch_size=tag(log, interval(0, 64))", "its low bound is 0"),
    "range_step_0": ("data.batch_size=range(8, 64, step=0)", "has step 0: a range needs a step > 0"),
    "empty_range": ("data.batch_size=range(64, 8)", "is empty: range(start, stop) runs from start up to"),
    "missing_group_option": ("model/mixer=choice(nystrom, nystorm)", "offers nystorm, which does not compose"),
}


@pytest.mark.parametrize(("space", "reason"), BAD_SPACES.values(), ids=BAD_SPACES.keys())
@pytest.mark.parametrize("form", ["argument", "sweeper_params"])
def test_a_search_space_that_cannot_be_sampled_is_refused_before_any_trial(space: str, reason: str, form) -> None:
    arg = space if form == "argument" else f"hydra.sweeper.params.{space}"
    with pytest.raises(ConfigError) as refused:
        check_launcher("train", sweeper_params_as_overrides(["hparams_search=optuna", arg]))
    message = str(refused.value)
    one_paragraph(message)
    key = space.split("=")[0]
    assert message.startswith(f"The Optuna search space's {key} (the command line: {space})") and reason in message


BAD_SETTINGS = {
    "unknown_sampler": (["hydra.sweeper.sampler.name=bayes"], "sampler.name=bayes is not an Optuna sampler of vitlab"),
    "unknown_pruner": (["hydra.sweeper.pruner.name=asha"], "Allowed: none, median, hyperband."),
    "option_of_another_sampler": (
        ["hydra.sweeper.sampler.name=random", "hydra.sweeper.sampler.n_startup_trials=4"],
        "n_startup_trials=4 does not apply to the random sampler, so it would be ignored",
    ),
    "pruner_option_out_of_range": (
        ["hydra.sweeper.pruner.name=hyperband", "hydra.sweeper.pruner.reduction_factor=1"],
        "reduction_factor=1 is out of range: it must be at least 2",
    ),
    "no_trials": (["hydra.sweeper.n_trials=0"], "hydra.sweeper.n_trials=0: it must be at least 1"),
    "read_only_journal": (
        ["hydra.sweeper.storage=/proc/vitlab/study.journal"],  # refused even to root
        "hydra.sweeper.storage=/proc/vitlab/study.journal cannot be written",
    ),
    "grid_over_an_interval": (
        ["hydra.sweeper.sampler.name=grid"],
        "grid needs a finite set of values for every parameter, but optim.lr is an interval",
    ),
    "retired_sampler_group": (["hydra/sweeper/sampler=random"], "takes hydra.sweeper.sampler.name=random (one of"),
    "retired_sweeper": (["hydra/sweeper=optuna"], "takes hydra/sweeper=vitlab_optuna"),
    "retired_failure_rate": (["hydra.sweeper.max_failure_rate=0.5"], "a failed trial is recorded as FAIL"),
}


@pytest.mark.parametrize(("args", "reason"), BAD_SETTINGS.values(), ids=BAD_SETTINGS.keys())
def test_a_search_setting_that_cannot_work_is_refused_in_one_paragraph(args: list[str], reason: str) -> None:
    with pytest.raises(ConfigError) as refused:
        check_launcher("train", sweeper_params_as_overrides(["hparams_search=optuna", *args]))
    one_paragraph(str(refused.value))
    assert reason in str(refused.value)


def test_a_journal_behind_a_file_is_refused_and_nothing_is_made(tmp_path) -> None:
    (tmp_path / "in_the_way").write_text("a file, not a folder")
    storage = tmp_path / "in_the_way" / "optuna" / "s.journal"
    with pytest.raises(ConfigError, match=r"cannot be written \(.*in_the_way is a file\)"):
        check_launcher("train", ["hparams_search=optuna", f"hydra.sweeper.storage={storage}"])
    assert sorted(p.name for p in tmp_path.iterdir()) == ["in_the_way"]


def test_the_sweeper_refuses_a_bad_setting_itself_before_opening_the_study(tmp_path, capsys) -> None:
    """Where vitlab-train's check did not run (another entry point), the sweeper says it: exit 2, no storage."""
    from hydra_plugins.vitlab_optuna.sweeper import VitlabOptunaSweeper

    cfg = compose_cfg(["hparams_search=optuna", f"paths.log_dir={tmp_path}", "hydra.sweeper.pruner.name=asha"])
    settings = OmegaConf.to_container(cfg.hydra.sweeper, resolve=False)
    settings.update(storage=str(tmp_path / "optuna" / "s.journal"), study_name="s")
    with pytest.raises(SystemExit) as stopped:
        VitlabOptunaSweeper(**settings).sweep([])
    assert stopped.value.code == 2
    paragraph = capsys.readouterr().err.split("vitlab: error: ")[1]
    one_paragraph(paragraph)
    assert paragraph.startswith("hydra.sweeper.pruner.name=asha is not an Optuna pruner")
    assert not (tmp_path / "optuna").exists()


def test_a_bad_space_in_a_config_names_hydra_sweeper_params() -> None:
    cfg = compose_cfg(["hparams_search=optuna"])
    with open_dict(cfg):
        cfg.hydra.sweeper.params["optim.weight_decay"] = "tag(log, interval(0.0, 0.1))"
    with pytest.raises(ConfigError, match=r"optim\.weight_decay \(hydra\.sweeper\.params: "):
        check_search_space(cfg, ["hparams_search=optuna"])


def test_the_shipped_search_space_passes() -> None:
    check_search_space(compose_cfg(["hparams_search=optuna"]), ["hparams_search=optuna"])
    assert OmegaConf.select(compose_cfg(["hparams_search=optuna"]), "hydra.sweeper.params") is not None


@pytest.mark.slow
def test_vitlab_train_refuses_a_bad_search_with_exit_2_and_leaves_the_study_untouched(tmp_path) -> None:
    import optuna

    from vitlab.training.optuna_pruning import open_storage

    journal = tmp_path / "optuna" / "kept.journal"
    journal.parent.mkdir()
    study = optuna.create_study(study_name="kept", storage=open_storage(str(journal)), direction="maximize")
    study.tell(study.ask(), 0.5)
    before = journal.read_bytes()
    args = ["hparams_search=optuna", "hydra.sweeper.study_name=kept", "hydra.sweeper.sampler.name=bayes", *TINY]
    run = run_cli("train", args, tmp_path)
    assert run.returncode == 2, run.stderr[-3000:]
    paragraph = run.stderr.split("vitlab: error: ")[1]
    one_paragraph(paragraph)
    assert "sampler.name=bayes" in paragraph
    assert journal.read_bytes() == before and sorted(p.name for p in tmp_path.iterdir()) == ["optuna"]


@pytest.mark.slow
def test_a_failed_trial_is_fail_in_the_study_and_the_search_goes_on(tmp_path) -> None:
    """Two trials, the documented `hydra.sweeper.params.<key>=` form: the random sampler's seed 10 draws lr -1.0
    first, refused by the run (a failed trial), then 0.001, which trains."""
    import optuna

    from vitlab.training.optuna_pruning import open_storage

    args = [
        "hparams_search=optuna",
        "hydra.sweeper.n_trials=2",
        "hydra.sweeper.study_name=fails",
        "hydra.sweeper.sampler.name=random",
        "hydra.sweeper.sampler.seed=10",
        "hydra.sweeper.params.optim.lr=choice(-1.0, 0.001)",  # the only parameter: the others fixed
        "hydra.sweeper.params.optim.weight_decay=0.01",
        "hydra.sweeper.params.module.label_smoothing=0.0",
        *TINY,
        *["+trainer.limit_train_batches=2", "+trainer.limit_val_batches=1", "+trainer.limit_test_batches=1"],
    ]
    run = run_cli("train", args, tmp_path)
    assert run.returncode == 1, run.stderr[-3000:]  # a sweep with a failed job exits non-zero
    assert "Traceback" not in run.stderr, run.stderr[-3000:]
    study = optuna.load_study(study_name="fails", storage=open_storage(str(tmp_path / "optuna" / "fails.journal")))
    states = {trial.params["optim.lr"]: trial.state.name for trial in study.trials}
    assert states == {-1.0: "FAIL", 0.001: "COMPLETE"}, f"{states}: the sampler drew other values than expected"
    statuses = sorted(r["status"] for r in run.results())
    assert statuses == ["failed", "ok"]


def test_a_search_whose_every_trial_failed_ends_in_one_paragraph(tmp_path, capsys) -> None:
    """No trial completed: no best value. The sweeper says what happened instead (exit status 1); with one
    completed trial it writes the best one to the sweep directory. In-process: a study of FAIL and PRUNED trials."""
    import optuna

    from hydra_plugins.vitlab_optuna.sweeper import VitlabOptunaSweeper

    storage = f"sqlite:///{tmp_path}/all_fail.db"
    study = optuna.create_study(study_name="all_fail", storage=storage, direction="maximize")
    for state in ("FAIL", "FAIL", "PRUNED"):
        study.tell(study.ask(), state=optuna.trial.TrialState[state])
    sweeper = VitlabOptunaSweeper(storage=storage, direction="maximize")
    sweeper.sweep_dir = tmp_path / "sweep"
    with pytest.raises(SystemExit) as stopped:
        sweeper._finish(study)
    assert stopped.value.code == 1
    paragraph = capsys.readouterr().err.split("vitlab: error: ")[1]
    assert paragraph.startswith("no trial of the Optuna study all_fail completed (2 FAIL, 1 PRUNED of 3 trials)")
    assert str(tmp_path / "sweep") in paragraph and storage in paragraph
    one_paragraph(paragraph)
    study.tell(study.ask({"x": optuna.distributions.FloatDistribution(0, 1)}), 0.5)
    sweeper._finish(study)
    assert "best_value: 0.5" in (tmp_path / "sweep" / "optimization_results.yaml").read_text()
