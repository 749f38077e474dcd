"""Retries that keep the experiment the same (docs/runs.md#retries): a job of a sweep that crashes is tried
again in place; out of memory, with half the micro-batch and twice the accumulation, so the images per
optimiser step and the number of steps are those of a run that never failed."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import Any

import pytest
import torch
from hydra.core.global_hydra import GlobalHydra
from omegaconf import open_dict

from conftest import TINY

FAULT = "+callbacks.fault._target_=helpers.oom_at_step.FaultAtStep"
# 210 training images, a global batch of 32: 6 optimiser steps an epoch (18 images dropped: more than half a
# batch, so half batches would make 13 in an epoch without the split), 12 in all; last.ckpt every 2 steps
SMALL = [
    *TINY,
    "trainer.max_epochs=2",
    "data.train_per_class=21",
    "data.batch_size=32",
    "callbacks.last_checkpoint.every_n_train_steps=2",
    "test=false",
    "callbacks.dynamics_monitor=null",
]


def _sweep(monkeypatch: pytest.MonkeyPatch, sweep_dir: Path, args: list[str]) -> int:
    """`vitlab-train -m <args>` in this process (Hydra's basic launcher, the real multirun); its exit code."""
    from vitlab.cli import train as train_cli

    monkeypatch.setattr(sys, "argv", ["vitlab-train", "-m", *args, f"hydra.sweep.dir={sweep_dir}"])
    GlobalHydra.instance().clear()
    try:
        train_cli.main()
        code = 0
    except SystemExit as exc:
        code = int(exc.code or 0)
    finally:
        GlobalHydra.instance().clear()
    return code


def _run(sweep_dir: Path) -> tuple[dict[str, Any], dict[str, Any], dict[str, Any]]:
    """(results.json, run.json, last.ckpt) of the sweep's one job."""
    run_dir = sweep_dir / "0"
    ckpt = torch.load(run_dir / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)
    return (
        json.loads((run_dir / "results.json").read_text()),
        json.loads((run_dir / "run.json").read_text()),
        ckpt,
    )


@pytest.fixture(scope="module")
def reference(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The sweep job of SMALL without a fault: the run every retried one must equal."""
    sweep_dir = tmp_path_factory.mktemp("reference")
    with pytest.MonkeyPatch.context() as monkeypatch:
        monkeypatch.delenv("VITLAB_TEST_FAULT", raising=False)
        assert _sweep(monkeypatch, sweep_dir, SMALL) == 0
    return sweep_dir


def _same_weights(ckpt: dict[str, Any], reference_ckpt: dict[str, Any]) -> None:
    """The same images in every optimiser step: the weights agree up to the order of the sums."""
    for key, value in reference_ckpt["state_dict"].items():
        torch.testing.assert_close(ckpt["state_dict"][key], value, rtol=1e-4, atol=1e-5, msg=key)


def test_out_of_memory_is_retried_with_half_the_micro_batch_and_the_same_steps(
    reference: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The acceptance test of the OOM retry: OOM at step 5 of 12 (after the checkpoint at step 4, mid-epoch).
    The job ends ok with retries=1, micro-batch 16 and accumulation 2 (global batch 32, as the reference
    run's), 12 optimiser steps, continued from step 4 (not from scratch), with the reference's weights."""
    monkeypatch.setenv("VITLAB_TEST_FAULT", "oom:5")
    monkeypatch.setenv("VITLAB_TEST_FAULT_ABOVE", "16")
    assert _sweep(monkeypatch, tmp_path / "retried", [*SMALL, FAULT]) == 0

    results, state, ckpt = _run(tmp_path / "retried")
    plain, _, reference_ckpt = _run(reference)
    assert results["status"] == "ok" and results["retries"] == 1 and results["resumed"] == 1
    assert (results["micro_batch"], results["accumulate_grad_batches"]) == (16, 2)
    assert (plain["micro_batch"], plain["accumulate_grad_batches"], plain["retries"]) == (32, 1, 0)
    assert results["micro_batch"] * results["accumulate_grad_batches"] == plain["micro_batch"]
    assert ckpt["global_step"] == reference_ckpt["global_step"] == 12
    assert results["epochs"] == plain["epochs"] == 2
    first, second = state["attempts"]
    assert first["status"] == "failed" and first["retried"] == "oom" and state["batch_split"] == 2
    assert second["resumed_from"]["global_step"] == 4 and second["status"] == "ok"
    _same_weights(ckpt, reference_ckpt)
    # the retried job is finished: the same sweep run again skips it (and retries nothing)
    assert _sweep(monkeypatch, tmp_path / "retried", [*SMALL, FAULT]) == 0
    assert _run(tmp_path / "retried")[1]["attempts"] == state["attempts"]


def test_out_of_memory_twice_quarters_the_micro_batch(
    reference: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """sweep.retries=2 and an OOM at step 5 above 8 images: 32 -> 16 -> 8 images a micro-batch, 4 accumulated,
    the last attempt continuing from the checkpoint of 32-image batches (counters rescaled by 4)."""
    monkeypatch.setenv("VITLAB_TEST_FAULT", "oom:5")
    monkeypatch.setenv("VITLAB_TEST_FAULT_ABOVE", "8")
    assert _sweep(monkeypatch, tmp_path / "retried", [*SMALL, FAULT, "sweep.retries=2"]) == 0
    results, state, ckpt = _run(tmp_path / "retried")
    assert (results["retries"], results["micro_batch"], results["accumulate_grad_batches"]) == (2, 8, 4)
    assert [a.get("retried") for a in state["attempts"]] == ["oom", "oom", None] and state["batch_split"] == 4
    assert ckpt["global_step"] == 12
    _same_weights(ckpt, _run(reference)[2])


def test_a_crash_before_any_checkpoint_is_retried_from_the_start_in_place(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("VITLAB_TEST_FAULT", "crash:1")
    monkeypatch.setenv("VITLAB_TEST_FAULT_ONCE", str(tmp_path / "fired"))
    assert _sweep(monkeypatch, tmp_path / "sweep", [*SMALL, "trainer.max_epochs=1", FAULT]) == 0
    results, state, ckpt = _run(tmp_path / "sweep")
    assert results["status"] == "ok" and (results["retries"], results["resumed"]) == (1, 0)
    assert [a["resumed_from"] for a in state["attempts"]] == [None, None] and ckpt["global_step"] == 6


@pytest.mark.parametrize(
    ("record", "batch", "expected"),
    [
        ({"error": "OutOfMemoryError: CUDA out of memory."}, 32, ("oom", True)),
        ({"error": "RuntimeError: CUDA error: out of memory"}, 32, ("oom", True)),
        ({"error": "OutOfMemoryError: CUDA out of memory.", "world_size": 2}, 4, ("oom", True)),
        ({"error": "OutOfMemoryError: CUDA out of memory.", "world_size": 2}, 6, None),  # 3 a device: odd
        ({"error": "OutOfMemoryError: CUDA out of memory."}, 1, None),
        ({"error": "ValueError: a bug"}, 1, ("crash", False)),
        ({"error": "ValueError: a bug", "traceback": None}, 32, None),  # a user error: no traceback
        ({"error": "ValueError: a bug", "status": "interrupted"}, 32, None),
        ({"error": "ValueError: a bug", "status": "pruned"}, 32, None),
    ],
)
def test_which_failure_is_retried_and_how(record: dict[str, Any], batch: int, expected: Any) -> None:
    from conftest import compose_cfg
    from vitlab.cli.retry import next_retry

    cfg = compose_cfg([*TINY, f"data.batch_size={batch}", "hydra.run.dir=/tmp/run"])
    with open_dict(cfg):
        cfg.paths.output_dir = "/tmp/run"  # named in the log lines
    full = {"status": "failed", "traceback": "Traceback ...", **record}
    assert next_retry(full, cfg, retries_done=0, budget=1) == expected
    assert next_retry(full, cfg, retries_done=1, budget=1) is None  # none left


@pytest.mark.parametrize(("n", "world"), [(210, 1), (210, 2), (100, 2), (7, 1)])
def test_a_split_epoch_gives_every_optimiser_step_the_images_of_its_whole_batch(n: int, world: int) -> None:
    """Micro-batches of half the size, two per original batch: every optimiser step sees the same images over
    all ranks (each rank may hold others of them), and a tail longer than half a batch (210 = 6 x 32 + 18) adds
    no micro-batch. A set smaller than one batch (7) is split too, dropping at most split - 1 images a rank."""
    from torch.utils.data import TensorDataset

    from vitlab.data.sampling import EpochSampler

    def per_step(per_rank_batch: int, split: int) -> list[set[int]]:
        steps: list[set[int]] = []
        for rank in range(world):
            sampler = EpochSampler(data, per_rank_batch, num_replicas=world, rank=rank, seed=3, split=split)
            sampler.set_epoch(1)
            images, size = [i for i, _ in sampler], sampler.rank_batch * split
            for k in range(0, len(images), size):
                if k // size == len(steps):
                    steps.append(set())
                steps[k // size] |= set(images[k : k + size])
        return steps

    data = TensorDataset(torch.arange(n))
    whole, halves = per_step(32 // world, 1), per_step(16 // world, 2)
    if n >= 32:
        assert halves == whole and len(whole) == n // 32
    else:
        assert halves[0] <= whole[0] and len(whole[0]) - len(halves[0]) < 2 and len(halves) == 1


def _single(monkeypatch: pytest.MonkeyPatch, run_dir: Path, args: list[str]) -> int:
    """`vitlab-train <args>` (a single run) in this process; its exit code."""
    from vitlab.cli import train as train_cli

    monkeypatch.setattr(sys, "argv", ["vitlab-train", *args, f"hydra.run.dir={run_dir}"])
    GlobalHydra.instance().clear()
    try:
        train_cli.main()
        return 0
    except SystemExit as exc:
        return int(exc.code or 0)
    finally:
        GlobalHydra.instance().clear()


def test_a_crash_is_retried_with_the_same_settings_until_no_retry_is_left(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A bug at step 5 in every attempt: the retry continues from step 4 with micro-batch 32 unchanged, crashes
    again, and the job is failed for good with retries=1 (the sweep then exits 1, as without retries)."""
    monkeypatch.setenv("VITLAB_TEST_FAULT", "crash:5")
    assert _sweep(monkeypatch, tmp_path / "sweep", [*SMALL, FAULT]) == 1
    run_dir = tmp_path / "sweep" / "0"
    results, state = (json.loads((run_dir / name).read_text()) for name in ("results.json", "run.json"))
    assert results["status"] == "failed" and "injected crash at step 5" in results["error"]
    assert (results["retries"], results["micro_batch"], results["accumulate_grad_batches"]) == (1, 32, 1)
    assert [(a["status"], a.get("retried")) for a in state["attempts"]] == [("failed", "crash"), ("failed", None)]
    assert state["attempts"][1]["resumed_from"]["global_step"] == 4 and state["batch_split"] == 1


def test_a_single_run_retries_only_when_asked(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A single run is not retried by default (it exits 1 at once); with sweep.retries=1 a crash that does not
    come back (once) is retried and the run ends ok."""
    monkeypatch.setenv("VITLAB_TEST_FAULT", "crash:5")
    args = [*SMALL, "trainer.max_epochs=1", FAULT]
    assert _single(monkeypatch, tmp_path / "plain", args) == 1
    assert len(json.loads((tmp_path / "plain" / "run.json").read_text())["attempts"]) == 1

    monkeypatch.setenv("VITLAB_TEST_FAULT_ONCE", str(tmp_path / "fired"))
    assert _single(monkeypatch, tmp_path / "asked", [*args, "sweep.retries=1"]) == 0
    results = json.loads((tmp_path / "asked" / "results.json").read_text())
    assert results["status"] == "ok" and results["retries"] == 1 and results["micro_batch"] == 32


def test_bad_input_is_never_retried(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A ConfigError during training is a user error: failed at once, one attempt, retries=0."""
    monkeypatch.setenv("VITLAB_TEST_FAULT", "config:2")
    assert _sweep(monkeypatch, tmp_path / "sweep", [*SMALL, "trainer.max_epochs=1", FAULT]) == 1
    run_dir = tmp_path / "sweep" / "0"
    results, state = (json.loads((run_dir / name).read_text()) for name in ("results.json", "run.json"))
    assert results["status"] == "failed" and "injected bad input" in results["error"] and results["retries"] == 0
    assert len(state["attempts"]) == 1 and "retried" not in state["attempts"][0]


@pytest.mark.parametrize("value", ["-1", "1.5", "true", "many"])
def test_bad_sweep_retries_are_refused(value: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys) -> None:
    """One paragraph naming the key and what it allows, exit 2, nothing trained."""
    assert _single(monkeypatch, tmp_path / "run", [*TINY, f"sweep.retries={value}"]) == 2
    err = capsys.readouterr().err
    assert "sweep.retries=" in err and "whole number >= 0" in err and "null" in err
    assert not (tmp_path / "run" / "results.json").exists() and not (tmp_path / "run" / "run.json").exists()


def test_a_retried_run_keeps_its_split_when_continued_and_refuses_a_users_batch(tmp_path: Path) -> None:
    """run.json's batch_split is the run's own: `resume=` with the run's overrides loads half the batch with twice
    the accumulation (and integer batch counts doubled); a user's data.batch_size is another experiment."""
    from conftest import compose_cfg
    from vitlab.cli.in_place import apply_attempt, open_attempt
    from vitlab.errors import ConfigError
    from vitlab.runs.state import RunState

    run_dir, overrides = tmp_path / "run", ["data.batch_size=32", "+trainer.limit_train_batches=3"]
    state = RunState(overrides=overrides, batch_split=2)
    state.begin(None)
    state.end("failed", 1.0)
    state.write(run_dir)
    attempt = open_attempt(run_dir, overrides)
    attempt.release()
    cfg = compose_cfg([*TINY, *overrides])
    apply_attempt(cfg, attempt)
    assert (cfg.data.batch_size, cfg.trainer.accumulate_grad_batches, cfg.trainer.limit_train_batches) == (16, 2, 6)
    with pytest.raises(ConfigError, match="holds another experiment"):
        open_attempt(run_dir, ["data.batch_size=16", "+trainer.limit_train_batches=3"])


@pytest.mark.slow  # vitlab-reproduce starts a vitlab-train -m process, which the fault kills
def test_reproduce_relaunches_a_group_whose_job_was_killed_and_the_job_continues_with_half_the_batch(
    tmp_path: Path,
) -> None:
    """The host's OOM killer (SIGKILL at step 3 of 6, after the checkpoint at step 2) takes the whole
    `vitlab-train -m` with it; vitlab-reproduce launches the group again and the job continues in place with
    micro-batch 16 and accumulation 2: ok, 6 optimiser steps, retries=1."""
    import yaml

    from conftest import run_cli

    smoke = [o for o in SMALL if "enable_progress_bar" not in o and o not in ("trainer.max_epochs=2", "test=false")]
    smoke += ["data.num_workers=0", "++trainer.limit_val_batches=1", "++trainer.limit_test_batches=1"]
    table = {
        "paper": "demo",
        "table": "killed",
        "title": "A table whose run is killed once",
        "source": "made up for the test",
        "metric": "test/acc",
        "datasets": [{"name": "digits", "label": "digits (test)", "overrides": []}],
        "scales": {"smoke": {"seeds": [0], "overrides": smoke}},
        "rows": [{"name": "vit", "label": "ViT", "overrides": [FAULT]}],
    }
    path = tmp_path / "tables" / "demo" / "killed.yaml"
    path.parent.mkdir(parents=True)
    path.write_text(yaml.safe_dump(table, sort_keys=False))
    env = {
        "PYTHONPATH": os.pathsep.join(filter(None, [str(Path(__file__).parent), os.environ.get("PYTHONPATH")])),
        "VITLAB_TEST_FAULT": "sigkill:3",
        "VITLAB_TEST_FAULT_ONCE": str(tmp_path / "fired"),
    }
    run = run_cli("reproduce", [f"table={path}", "scale=smoke"], tmp_path / "logs", env=env)
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    assert (tmp_path / "fired").exists() and ": ok 1/1" in run.stdout
    group = tmp_path / "logs" / "reproduce" / "demo" / "killed" / "smoke" / "vit" / "digits"
    assert "was killed (exit -9); retry 1 of 1 with half the micro-batch" in (group / "launch.log").read_text()
    results = json.loads((group / "seed0" / "results.json").read_text())
    state = json.loads((group / "seed0" / "run.json").read_text())
    assert results["status"] == "ok" and results["retries"] == 1 and results["resumed"] == 1
    assert (results["micro_batch"], results["accumulate_grad_batches"]) == (16, 2)
    assert [(a["status"], a.get("retried")) for a in state["attempts"]] == [("killed", "oom"), ("ok", None)]
    assert state["attempts"][1]["resumed_from"]["global_step"] == 2
    ckpt = torch.load(group / "seed0" / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)
    assert ckpt["global_step"] == 6


def test_an_optuna_trial_that_ran_out_of_memory_is_retried_and_completes(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """vitlab's Optuna sweeper launches trials through Hydra's launcher into train_job: a trial out of memory at
    step 3 continues with half the micro-batch, and the study is told COMPLETE with the trial's val/acc."""
    import optuna

    from vitlab.training.optuna_pruning import open_storage

    monkeypatch.setenv("VITLAB_TEST_FAULT", "oom:3")
    monkeypatch.setenv("VITLAB_TEST_FAULT_ABOVE", "16")
    args = ["hparams_search=optuna", "hydra.sweeper.n_trials=1", "hydra.sweeper.study_name=retried"]
    args += [*SMALL, "trainer.max_epochs=1", FAULT, f"paths.log_dir={tmp_path}"]
    assert _sweep(monkeypatch, tmp_path / "sweep", args) == 0
    results = json.loads((tmp_path / "sweep" / "0" / "results.json").read_text())
    assert results["status"] == "ok" and results["retries"] == 1 and results["micro_batch"] == 16
    study = optuna.load_study(study_name="retried", storage=open_storage(str(tmp_path / "optuna" / "retried.journal")))
    assert [t.state.name for t in study.trials] == ["COMPLETE"]
    assert study.trials[0].value == pytest.approx(results["val/acc"])
