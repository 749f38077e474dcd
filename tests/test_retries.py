"""Retries that keep the experiment the same (docs/runs.md#retries): a job of a sweep that crashes is tried
again in place; out of memory, with half the micro-batch and twice the accumulation, so the images per
optimiser step and the number of steps are those of a run that never failed."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import pytest
import torch
from hydra.core.global_hydra import GlobalHydra

from conftest import TINY

FAULT = "+callbacks.fault._target_=helpers.oom_at_step.FaultAtStep"
# 200 training images, a global batch of 32: 6 optimiser steps an epoch, 12 in all; last.ckpt every 2 steps
SMALL = [
    *TINY,
    "trainer.max_epochs=2",
    "data.train_per_class=20",
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


def test_out_of_memory_is_retried_with_half_the_micro_batch_and_the_same_steps(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The acceptance test of the OOM retry: OOM at step 5 of 12 (after the checkpoint at step 4, mid-epoch).
    The job ends ok with retries=1, micro-batch 16 and accumulation 2 (global batch 32, as the reference
    run's), 12 optimiser steps, continued from step 4 (not from scratch), with the reference's weights."""
    monkeypatch.setenv("VITLAB_TEST_FAULT", "oom:5")
    monkeypatch.setenv("VITLAB_TEST_FAULT_ABOVE", "16")
    assert _sweep(monkeypatch, tmp_path / "retried", [*SMALL, FAULT]) == 0
    monkeypatch.delenv("VITLAB_TEST_FAULT")
    assert _sweep(monkeypatch, tmp_path / "reference", SMALL) == 0

    results, state, ckpt = _run(tmp_path / "retried")
    reference, _, reference_ckpt = _run(tmp_path / "reference")
    assert results["status"] == "ok" and results["retries"] == 1 and results["resumed"] == 1
    assert (results["micro_batch"], results["accumulate_grad_batches"]) == (16, 2)
    assert (reference["micro_batch"], reference["accumulate_grad_batches"], reference["retries"]) == (32, 1, 0)
    assert results["micro_batch"] * results["accumulate_grad_batches"] == reference["micro_batch"]
    assert ckpt["global_step"] == reference_ckpt["global_step"] == 12
    assert results["epochs"] == reference["epochs"] == 2
    first, second = state["attempts"]
    assert first["status"] == "failed" and first["retried"] == "oom" and state["batch_split"] == 2
    assert second["resumed_from"]["global_step"] == 4 and second["status"] == "ok"
    # the same images in every optimiser step: the weights agree up to the order of the sums
    for key, value in reference_ckpt["state_dict"].items():
        torch.testing.assert_close(ckpt["state_dict"][key], value, rtol=1e-4, atol=1e-5, msg=key)
    # the retried job is finished: the same sweep run again skips it (and retries nothing)
    assert _sweep(monkeypatch, tmp_path / "retried", [*SMALL, FAULT]) == 0
    assert _run(tmp_path / "retried")[1]["attempts"] == state["attempts"]
