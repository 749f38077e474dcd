"""The parts of exact resume, in-process: sampler, loader position, per-sample seeds, atomic checkpoints,
signal handling, the CSV log, run.json, `resume=` argument expansion, provenance."""

from __future__ import annotations

import csv
import json
import os
import random
import signal
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from torch.utils.data import TensorDataset

from vitlab.cli.resume import expand_resume_argv, newest_unfinished
from vitlab.data.sampling import EpochSampler, ResumableLoader, SeededSamples, mix_seed, seeded_rng
from vitlab.errors import ConfigError
from vitlab.provenance import git_state, package_versions
from vitlab.runs.state import RunState, experiment_overrides, same_experiment
from vitlab.training.checkpointing import LastCheckpoint
from vitlab.training.csv_logger import ResumableCSVLogger
from vitlab.training.interrupts import StopNow, catch_interrupts, pending_signal
from vitlab.training.optim import stepping_batches

N = 103  # not a multiple of any batch size below: the epoch's tail is dropped


def dataset(n: int = N) -> TensorDataset:
    return TensorDataset(torch.arange(n))


def steps(sampler: EpochSampler, epoch: int) -> list[list[int]]:
    sampler.set_epoch(epoch)
    flat = [i for i, _ in sampler]
    b = sampler.rank_batch
    return [flat[k : k + b] for k in range(0, len(flat), b)]


def test_epoch_order_is_a_function_of_seed_and_epoch_only() -> None:
    a, b = EpochSampler(dataset(), 8, seed=5), EpochSampler(dataset(), 8, seed=5)
    assert steps(a, 3) == steps(b, 3)  # two samplers, same (seed, epoch)
    assert steps(a, 3) != steps(a, 4) and steps(a, 3) != steps(EpochSampler(dataset(), 8, seed=6), 3)
    flat = [i for s in steps(a, 0) for i in s]
    assert len(flat) == (N // 8) * 8 and len(set(flat)) == len(flat)  # full batches, no repeats


@pytest.mark.parametrize("world", [2, 4])
def test_every_world_size_trains_on_the_same_images_per_step(world: int) -> None:
    """The global batch of step s is the same set of images (with the same sample seeds) for 1 and W ranks."""
    global_batch = 16
    one = EpochSampler(dataset(), global_batch, seed=1)
    ranks = [EpochSampler(dataset(), global_batch // world, num_replicas=world, rank=r, seed=1) for r in range(world)]
    for epoch in (0, 7):
        single = steps(one, epoch)
        per_rank = [steps(s, epoch) for s in ranks]
        assert all(len(p) == len(single) for p in per_rank)
        for s, batch in enumerate(single):
            assert sorted(i for p in per_rank for i in p[s]) == sorted(batch)
        one.set_epoch(epoch)
        seeds = dict(iter(one))
        for sampler in ranks:
            sampler.set_epoch(epoch)
            assert all(seeds[i] == seed for i, seed in sampler)


def test_a_data_set_smaller_than_one_global_batch_gives_one_step() -> None:
    ranks = [EpochSampler(dataset(10), 8, num_replicas=2, rank=r) for r in range(2)]
    assert [len(s) for s in ranks] == [5, 5] and ranks[0].steps == 1
    assert set(steps(ranks[0], 0)[0]).isdisjoint(steps(ranks[1], 0)[0])


@pytest.mark.parametrize("workers", [0, 2])
def test_loader_position_survives_a_checkpoint_mid_epoch_and_at_its_end(workers: int) -> None:
    def loader() -> ResumableLoader:
        ds = dataset()
        return ResumableLoader(
            SeededSamples(ds), batch_size=8, sampler=EpochSampler(ds, 8, seed=2), num_workers=workers
        )

    first = loader()
    first.sampler.set_epoch(4)
    batches = [b[0].tolist() for b in first]
    it = iter(first)
    consumed = [next(it)[0].tolist() for _ in range(5)]
    state = first.state_dict()
    assert state == {"epoch": 4, "batches_done": 5, "samples_done": 40, "rank_batch": 8} and consumed == batches[:5]

    resumed = loader()
    resumed.load_state_dict(state)
    resumed.sampler.set_epoch(4)  # Lightning sets the epoch again after loading: the position must survive it
    assert [b[0].tolist() for b in resumed] == batches[5:]
    assert resumed.state_dict()["batches_done"] == len(batches)

    at_end = loader()
    at_end.load_state_dict({"epoch": 4, "batches_done": len(batches)})  # saved after the epoch's last batch
    nxt = loader()
    nxt.sampler.set_epoch(5)
    assert [b[0].tolist() for b in at_end] == [b[0].tolist() for b in nxt]  # the next epoch, from its start


def test_augmentation_depends_on_the_sample_seed_not_on_history() -> None:
    class Noisy(torch.utils.data.Dataset):
        def __len__(self) -> int:
            return 4

        def __getitem__(self, i: int) -> tuple[float, float, float]:
            return torch.rand(()).item(), random.random(), float(np.random.rand())

    ds = SeededSamples(Noisy())
    before = torch.get_rng_state(), random.getstate(), np.random.get_state()[1].copy()
    a = ds[(2, mix_seed(0, 1, 2))]
    torch.rand(100), random.random(), np.random.rand(5)  # history in between
    assert ds[(2, mix_seed(0, 1, 2))] == a and ds[(2, mix_seed(0, 2, 2))] != a
    torch.set_rng_state(before[0])
    random.setstate(before[1])
    with seeded_rng(7):
        pass
    assert torch.equal(torch.get_rng_state(), before[0]) and random.getstate() == before[1]  # put back


class _Noisy(torch.utils.data.Dataset):
    """Draws from all three generators, as augmentations do."""

    def __len__(self) -> int:
        return 24

    def __getitem__(self, i: int) -> torch.Tensor:
        return torch.tensor([i, torch.rand(()).item(), random.random(), float(np.random.rand())], dtype=torch.float64)


def test_loader_workers_draw_what_the_main_process_draws() -> None:
    """Workers skip putting the generators back after a sample (nothing else draws there, every sample seeds
    them first): the samples must stay those the main process draws, where the states are put back."""
    sampler = EpochSampler(_Noisy(), 4, seed=3)
    batches = {
        workers: torch.cat(
            list(ResumableLoader(SeededSamples(_Noisy()), sampler=sampler, batch_size=4, num_workers=workers))
        )
        for workers in (0, 2)
    }
    assert batches[0].shape == (24, 4) and torch.equal(batches[0], batches[2])


class FakeTrainer:
    """What `LastCheckpoint.save` uses of a trainer; `payload` is written, `fail_after` bytes then an error."""

    is_global_zero = True
    global_step = 12

    def __init__(self, payload: bytes, fail_after: int | None = None) -> None:
        self.payload, self.fail_after = payload, fail_after
        self.strategy = SimpleNamespace(barrier=lambda name: None)

    def save_checkpoint(self, path: Path) -> None:
        data = self.payload if self.fail_after is None else self.payload[: self.fail_after]
        Path(path).write_bytes(data)
        if self.fail_after is not None:
            raise KeyboardInterrupt  # killed in the middle of the write


def test_last_checkpoint_is_replaced_atomically(tmp_path: Path) -> None:
    saver = LastCheckpoint(tmp_path / "checkpoints")
    saver.save(FakeTrainer(b"old" * 1000))  # type: ignore[arg-type]
    with pytest.raises(KeyboardInterrupt):
        saver.save(FakeTrainer(b"new" * 1000, fail_after=10))  # type: ignore[arg-type]
    assert saver.path.read_bytes() == b"old" * 1000  # the previous complete checkpoint, not half a new one
    saver.save(FakeTrainer(b"new" * 1000))  # type: ignore[arg-type]
    assert saver.path.read_bytes() == b"new" * 1000 and saver.last_saved_step == 12
    assert not list(saver.dirpath.glob("*.tmp"))
    with pytest.raises(ConfigError, match="every_n_train_steps"):
        LastCheckpoint(tmp_path, every_n_train_steps=-1)


def test_signals_are_recorded_once_and_a_second_ctrl_c_stops_at_once() -> None:
    previous = signal.getsignal(signal.SIGUSR1)
    with catch_interrupts():
        os.kill(os.getpid(), signal.SIGUSR1)
        assert pending_signal() == signal.SIGUSR1
        os.kill(os.getpid(), signal.SIGTERM)  # a second signal is not a new request
        assert pending_signal() == signal.SIGUSR1
        with pytest.raises(StopNow):
            os.kill(os.getpid(), signal.SIGINT)
    assert signal.getsignal(signal.SIGUSR1) == previous and pending_signal() is None


def test_csv_log_keeps_the_rows_before_the_resumed_step(tmp_path: Path) -> None:
    first = ResumableCSVLogger(tmp_path, name="csv", version="")
    for step in range(0, 50, 10):
        first.log_metrics({"train/loss": 1.0 / (step + 1)}, step=step)
    first.save()
    resumed = ResumableCSVLogger(tmp_path, name="csv", version="", keep_before_step=25)
    resumed.log_metrics({"train/loss": 0.5, "val/acc": 0.9}, step=30)
    resumed.save()
    rows = list(csv.DictReader((tmp_path / "csv" / "metrics.csv").open()))
    assert [int(r["step"]) for r in rows] == [0, 10, 20, 30] and rows[-1]["val/acc"] == "0.9"


def test_overrides_that_do_not_change_the_experiment_are_ignored() -> None:
    a = ["seed=1", "optim.lr=1e-3", "trainer.devices=2", "logger=wandb", "paths.log_dir=/x"]
    b = ["optim.lr=1e-3", "seed=1", "trainer.devices=4", "hydra.run.dir=/y"]
    assert experiment_overrides(a) == ["optim.lr=0.001", "seed=1", "trainer.devices=2"]  # canonical, as Hydra writes
    assert same_experiment(a, b, ignore=("trainer", "logger", "paths", "hydra"))
    assert not same_experiment(a, [*b, "model/stem=conv"], ignore=("trainer", "logger", "paths", "hydra"))


def make_run(log_dir: Path, name: str, overrides: list[str], status: str | None, created: str) -> Path:
    run_dir = log_dir / "runs" / "2026-01-01" / name
    RunState(overrides=overrides, created=created).write(run_dir)
    if status is not None:
        (run_dir / "results.json").write_text(json.dumps({"status": status}))
    return run_dir


def test_resume_reads_the_run_overrides_and_accepts_only_trainer_and_logging_ones(tmp_path: Path) -> None:
    run = make_run(tmp_path, "a", ["optim.lr=1e-3", "trainer.max_epochs=3"], "interrupted", "2026-01-01T00:00:00")
    argv = expand_resume_argv([f"resume={run}", "trainer.max_epochs=5", "logger=wandb"])
    assert argv[:3] == ["optim.lr=1e-3", "trainer.max_epochs=5", "logger=wandb"]
    assert argv[3] == f"hydra.run.dir={run.resolve()}"
    with pytest.raises(ConfigError, match=r"optim.lr=3e-3 would make it another experiment.*trainer"):
        expand_resume_argv([f"resume={run}", "optim.lr=3e-3"])
    with pytest.raises(ConfigError, match="not a vitlab run directory"):
        expand_resume_argv([f"resume={tmp_path / 'nope'}"])
    with pytest.raises(ConfigError, match="-m/--multirun"):
        expand_resume_argv(["-m", f"resume={run}"])
    finished = make_run(tmp_path, "b", ["optim.lr=1e-3"], "ok", "2026-01-01T00:00:01")
    with pytest.raises(ConfigError, match="nothing to continue"):
        expand_resume_argv([f"resume={finished}"])


def test_resume_auto_picks_the_newest_unfinished_run_of_the_same_experiment(tmp_path: Path) -> None:
    same = ["optim.lr=1e-3", f"paths.log_dir={tmp_path}"]
    make_run(tmp_path, "old", same, "interrupted", "2026-01-01T00:00:00")
    newest = make_run(tmp_path, "new", same, None, "2026-01-01T00:00:05")  # killed: no results.json
    make_run(tmp_path, "done", same, "ok", "2026-01-01T00:00:09")
    make_run(tmp_path, "failed", same, "failed", "2026-01-01T00:00:09")
    make_run(tmp_path, "other", ["optim.lr=3e-3", f"paths.log_dir={tmp_path}"], None, "2026-01-01T00:00:09")
    assert newest_unfinished(tmp_path, [*same, "trainer.devices=1"]) == newest
    assert expand_resume_argv(["resume=auto", *same])[-1] == f"hydra.run.dir={newest.resolve()}"
    fresh = ["optim.lr=1e-2", f"paths.log_dir={tmp_path}"]
    assert expand_resume_argv(["resume=auto", *fresh]) == fresh  # none of those: a new run


def test_stepping_batches_follow_lightning_without_building_the_loader() -> None:
    trainer = SimpleNamespace(
        overfit_batches=0.0, limit_train_batches=1.0, accumulate_grad_batches=2, max_epochs=3, max_steps=-1
    )
    assert stepping_batches(trainer, 19) == 10 * 3
    trainer.limit_train_batches, trainer.max_steps = 0.5, 20
    assert stepping_batches(trainer, 19) == 15  # int(19 * 0.5) = 9 batches -> 5 steps per epoch
    trainer.max_steps = 12
    assert stepping_batches(trainer, 19) == 12
    trainer.limit_train_batches = 4
    assert stepping_batches(trainer, 19) == 6


def test_provenance_names_versions_and_the_state_of_the_tree() -> None:
    versions = package_versions()
    assert {"python", "torch", "torchvision", "timm", "pytorch-lightning", "hydra-core"} <= set(versions)
    assert versions["torch"] == torch.__version__.split("+")[0] or versions["torch"] in torch.__version__
    state = git_state(str(Path(__file__).parent))
    assert len(state["git_sha"]) == 40 and isinstance(state["git_dirty"], bool)
    assert (state["git_diff_sha256"] == "clean") != state["git_dirty"]


def test_a_run_directory_is_continued_only_by_its_own_experiment(tmp_path: Path) -> None:
    from vitlab.cli.in_place import RunFinished, open_attempt

    run_dir = tmp_path / "run"
    first = open_attempt(run_dir, ["optim.lr=1e-3", "trainer.devices=1"])
    assert first.checkpoint is None and first.state is not None and first.state.resumed == 0
    with pytest.raises(ConfigError, match="is in use by another process"):  # one attempt at a time
        open_attempt(run_dir, ["optim.lr=1e-3", "trainer.devices=1"])
    first.release()
    (run_dir / "checkpoints").mkdir()
    torch.save({"epoch": 2, "global_step": 40, "state_dict": {}}, run_dir / "checkpoints" / "last.ckpt")
    second = open_attempt(run_dir, ["trainer.devices=2", "optim.lr=1e-3"])  # the devices may change
    assert second.checkpoint == run_dir / "checkpoints" / "last.ckpt"
    assert second.position == {"epoch": 2, "global_step": 40} and second.resumed == 1
    attempts = json.loads((run_dir / "run.json").read_text())["attempts"]
    assert len(attempts) == 2 and attempts[1]["overrides"] == ["trainer.devices=2", "optim.lr=1e-3"]
    assert len(attempts[1]["git_sha"]) == 40
    second.release()
    with pytest.raises(ConfigError, match=r"another experiment.*trainer.precision=bf16-mixed"):  # changes the numbers
        open_attempt(run_dir, ["optim.lr=1e-3", "trainer.precision=bf16-mixed"])
    with pytest.raises(ConfigError, match=r"another experiment.*differing: optim.lr=0.001 optim.lr=0.003"):
        open_attempt(run_dir, ["optim.lr=3e-3"])
    (run_dir / "results.json").write_text(json.dumps({"status": "ok"}))
    with pytest.raises(RunFinished, match="never overwritten"):
        open_attempt(run_dir, ["optim.lr=1e-3"])
    assert len(json.loads((run_dir / "run.json").read_text())["attempts"]) == 2  # refusals write nothing
