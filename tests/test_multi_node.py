"""Two nodes, simulated on localhost: two launches of `vitlab-train` with `trainer.num_nodes=2`, one process each
(NODE_RANK and RANK 0 and 1, MASTER_ADDR=127.0.0.1, a free MASTER_PORT, gloo), writing one run directory.

They are one run (one results.json, one run.json attempt), equal to one process within the DDP parity tolerance
of tests/test_resume.py (drop-path on: each image's masks come from its own seed), and SIGKILL of either node at
a step drawn at random, then `resume=<run dir>` on both nodes, ends bit-identical to the uninterrupted two-node
run. Which node is killed (0 or 1) and at which step are both drawn from VITLAB_TEST_SEED (default 0), and the
draw is in every assertion message: one kill-and-resume (~25 s) per run of the suite, the other node under
another seed, instead of both every time.
"""

from __future__ import annotations

import json
import os
import random
import signal
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import ROOT, TINY, assert_identical, run_cli

pytestmark = pytest.mark.slow  # starts vitlab processes and trains end to end: not in make test-fast

# 19 steps per epoch (1,257 digits, batch 64): 38 steps; last.ckpt also every 5 steps, so a kill lands mid-epoch
ARGS = [*TINY, "trainer.max_epochs=2", "seed=3", "callbacks.last_checkpoint.every_n_train_steps=5"]
NODES = ["trainer=ddp_cpu", "trainer.devices=1", "trainer.num_nodes=2"]
STEPS = 2 * 19
KILLER = ROOT / "tests" / "helpers" / "kill_node_at_step.py"
SEED = int(os.environ.get("VITLAB_TEST_SEED", "0"))


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def launch_nodes(args: list[str], run_dir: Path, kill_at: str | None = None) -> list[subprocess.Popen]:
    """Node 0 and node 1, each in its own session (a node's SIGKILL takes down only its own processes).

    RANK tells vitlab before Lightning starts which launch is rank 0 (the one that records the run); node 1
    does not write Hydra's `.hydra/` (as Lightning's own DDP launches of ranks > 0 do not)."""
    port, procs = free_port(), []
    for node in (0, 1):
        env = {**os.environ, "WANDB_MODE": "disabled", "PYTHONWARNINGS": "ignore", "OMP_NUM_THREADS": "1"}
        env.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), NODE_RANK=str(node), RANK=str(node))
        for key in ("HYDRA_FULL_ERROR", "VITLAB_RESUME_FROM", "LOCAL_RANK", "WORLD_SIZE"):  # each node decides itself
            env.pop(key, None)
        start = [sys.executable, "-m", "vitlab.cli.train"]
        if kill_at is not None:
            env["VITLAB_TEST_KILL_AT"] = kill_at
            start = [sys.executable, str(KILLER)]
        extra = ["hydra.output_subdir=null"] if node else []
        command = [*start, *args, f"paths.log_dir={run_dir.parent}", *extra]
        procs.append(
            subprocess.Popen(
                command,
                cwd=ROOT,
                env=env,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                text=True,
                start_new_session=True,
            )
        )
    return procs


def finish(procs: list[subprocess.Popen], timeout: float = 600) -> list[tuple[int, str]]:
    outputs = []
    for proc in procs:
        _, err = proc.communicate(timeout=timeout)
        outputs.append((proc.returncode, err))
    return outputs


def train_two_nodes(args: list[str], run_dir: Path) -> dict:
    outputs = finish(launch_nodes([*args, *NODES, f"hydra.run.dir={run_dir}"], run_dir))
    for node, (code, err) in enumerate(outputs):
        assert code == 0, f"node {node}: exit {code}\n{err[-3000:]}"
    return json.loads((run_dir / "results.json").read_text())


def val_losses(run_dir: Path) -> list[float]:
    import csv

    with open(run_dir / "csv" / "metrics.csv", newline="") as fh:
        return [float(r["val/loss"]) for r in csv.DictReader(fh) if r.get("val/loss")]


@pytest.fixture(scope="module")
def one_process(tmp_path_factory) -> Path:
    run_dir = tmp_path_factory.mktemp("one") / "run"
    run = run_cli("train", [*ARGS, f"hydra.run.dir={run_dir}"], run_dir.parent)
    assert run.returncode == 0, run.stderr[-3000:]
    return run_dir


@pytest.fixture(scope="module")
def two_nodes(tmp_path_factory) -> Path:
    run_dir = tmp_path_factory.mktemp("two_nodes") / "run"
    result = train_two_nodes(ARGS, run_dir)
    assert result["status"] == "ok" and result["world_size"] == 2, result
    return run_dir


def test_two_nodes_on_localhost_are_one_run_equal_to_one_process(one_process: Path, two_nodes: Path) -> None:
    """Tolerance of tests/test_resume.py's DDP parity: val/loss within 1e-5 at every epoch, test/loss within
    1e-4, test/acc within one test image (1/360)."""
    assert [p.parent for p in two_nodes.parent.rglob("results.json")] == [two_nodes]
    assert sorted(p.name for p in (two_nodes / ".hydra").iterdir()) == ["config.yaml", "hydra.yaml", "overrides.yaml"]
    state = json.loads((two_nodes / "run.json").read_text())
    assert len(state["attempts"]) == 1 and state["attempts"][0]["status"] == "ok", state
    one, two = (json.loads((d / "results.json").read_text()) for d in (one_process, two_nodes))
    a, b = val_losses(one_process), val_losses(two_nodes)
    assert len(a) == len(b) == 2 and max(abs(x - y) for x, y in zip(a, b, strict=True)) < 1e-5, (a, b)
    assert abs(one["test/loss"] - two["test/loss"]) < 1e-4, (one["test/loss"], two["test/loss"])
    assert abs(one["test/acc"] - two["test/acc"]) <= 1 / 360, (one["test/acc"], two["test/acc"])


def draw_node_and_step(test: str) -> tuple[int, int, str]:
    """The node to kill and the step, from a generator seeded by SEED and the test's name, and the words that
    replay the draw (as tests/test_resume.py's draw_step)."""
    rng = random.Random(f"{SEED}/{test}")
    node, step = rng.randint(0, 1), rng.randint(6, STEPS - 2)  # after the first checkpoint (5), before the end
    return node, step, f"VITLAB_TEST_SEED={SEED} drew node {node} of [0, 1] and step {step} of [6, {STEPS - 2}]"


def test_sigkill_of_either_node_then_resume_on_both_is_bit_identical(two_nodes: Path, tmp_path) -> None:
    node, step, drawn = draw_node_and_step("multi_node")
    why = f"node {node} killed at step {step} ({drawn})"
    run_dir = tmp_path / "run"
    procs = launch_nodes([*ARGS, *NODES, f"hydra.run.dir={run_dir}"], run_dir, kill_at=f"{step}:{node}")
    killed, survivor = procs[node], procs[1 - node]
    killed.wait(timeout=600)
    try:  # the other node waits in its next collective (or fails on the broken connection): the job is lost
        survivor.wait(timeout=20)
    except subprocess.TimeoutExpired:
        os.killpg(survivor.pid, signal.SIGKILL)
    outputs = finish(procs)
    assert outputs[node][0] == -9, f"{why}: exit {outputs[node][0]}\n{outputs[node][1][-2000:]}"
    assert outputs[1 - node][0] != 0, f"{why}: the other node ended {outputs[1 - node][0]}"
    assert (run_dir / "checkpoints" / "last.ckpt").is_file(), why

    resumed = finish(launch_nodes([f"resume={run_dir}"], run_dir))
    logs = "\n".join(
        f"--- resumed node {rank}, exit {code}:\n{err[-2500:]}" for rank, (code, err) in enumerate(resumed)
    )
    assert all(code == 0 for code, _ in resumed), f"{why}\n{logs}"
    result = json.loads((run_dir / "results.json").read_text())
    start = json.loads((run_dir / "run.json").read_text())["attempts"][-1]["resumed_from"]
    assert result["status"] == "ok" and result["world_size"] == 2, f"{why}: {result}"
    assert 0 < start["global_step"] <= step, f"{why}: resumed from {start}"
    assert_identical(run_dir, two_nodes, why)
