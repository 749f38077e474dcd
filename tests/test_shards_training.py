"""Training from a packed set (`data=shards data.root=<dir>`) is the same experiment as training from its source.

Digits are packed from their 8x8 originals and read back bit for bit, the training augmentation included, under
the same sample seeds (tests/test_shards.py); the training order comes from vitlab's own `EpochSampler` over the
map-style `ShardSplit`. So the tolerance between a packed digits run and the in-memory run is zero: test/acc,
test/loss, val/acc and every weight are equal. Exact resume after a SIGKILL mid-epoch (with loader workers, and
under `trainer=ddp_cpu`) is checked as in tests/test_resume.py, whose fault injector and helpers are reused here;
the step a run is killed at is drawn from VITLAB_TEST_SEED and printed in every assertion message.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from omegaconf import OmegaConf
from pytorch_lightning.accelerators import CPUAccelerator

from conftest import assert_identical, compose_cfg
from test_resume import BASE, draw_step, kill_and_resume, train_into
from vitlab.data.digits import DigitsDataModule
from vitlab.data.fake import FakeDataModule
from vitlab.data.shards.module import ShardsDataModule, read_manifest
from vitlab.data.shards.pack import pack

pytestmark = pytest.mark.slow  # trains end to end and starts vitlab processes: not in make test-fast

EPOCHS = 2
STEPS = EPOCHS * 19  # 1,257 training digits, global batch 64: 19 steps per epoch, the tail of 41 dropped
ARGS = [*BASE, f"trainer.max_epochs={EPOCHS}"]
EVERY = 5  # the killed runs also checkpoint every 5 steps, so they resume mid-epoch


def source_of(overrides: list[str]) -> dict:
    """The resolved data config a packed set records as its source (what `vitlab-data pack data=...` writes)."""
    return OmegaConf.to_container(compose_cfg(overrides).data, resolve=True)  # type: ignore[return-value]


@pytest.fixture(scope="module")
def packed_digits(tmp_path_factory) -> Path:
    """Digits packed into a few shards of unequal sample counts (~1.6 kB a sample as the writer counts)."""
    out = tmp_path_factory.mktemp("digits") / "packed"
    manifest = pack(
        DigitsDataModule(img_size=32), str(out), source=source_of(["data=digits"]), shard_bytes=600_000, progress=False
    )
    counts = [s["samples"] for s in manifest["splits"]["train"]["shards"]]
    assert 3 <= len(counts) <= 5 and len(set(counts)) > 1, counts
    return out


def shards_args(packed: Path, *extra: str) -> list[str]:
    return [*ARGS, "data=shards", f"data.root={packed}", *extra]


@pytest.fixture(scope="module")
def shards_reference(packed_digits: Path, tmp_path_factory) -> Path:
    """The uninterrupted run from shards, with two loader workers (the killed run of the workers test has them too)."""
    run_dir = tmp_path_factory.mktemp("shards_reference") / "run"
    train_into(shards_args(packed_digits, "data.num_workers=2"), run_dir)
    return run_dir


@pytest.fixture(scope="module")
def shards_reference_ddp(packed_digits: Path, tmp_path_factory) -> Path:
    run_dir = tmp_path_factory.mktemp("shards_reference_ddp") / "run"
    result = train_into(shards_args(packed_digits, "data.num_workers=0", "trainer=ddp_cpu"), run_dir)
    assert result["world_size"] == 2
    return run_dir


def test_a_packed_digits_run_equals_the_in_memory_run(
    packed_digits: Path, shards_reference: Path, tmp_path: Path
) -> None:
    """Tolerance zero: the same images, augmentations, order and drop-path masks, so the same run to the bit."""
    in_memory = tmp_path / "digits"
    want = train_into([*ARGS, "data=digits"], in_memory)
    got = json.loads((shards_reference / "results.json").read_text())
    assert got["status"] == want["status"] == "ok" and got["epochs"] == EPOCHS
    assert (got["test/acc"], got["test/loss"]) == (want["test/acc"], want["test/loss"])
    assert_identical(shards_reference, in_memory, "data=shards (digits packed, 2 workers) against data=digits")
    assert got["data/sha256"] == read_manifest(str(packed_digits))["sha256"] != want["data/sha256"]


def test_sigkill_mid_epoch_with_two_workers_then_resume_is_bit_identical(
    packed_digits: Path, shards_reference: Path, tmp_path: Path
) -> None:
    step, drawn = draw_step("shards_sigkill_workers", EVERY + 1, STEPS - 2)
    run_dir = tmp_path / "run"
    args = shards_args(packed_digits, "data.num_workers=2", f"callbacks.last_checkpoint.every_n_train_steps={EVERY}")
    start = kill_and_resume(args, run_dir, step, drawn)
    latest = max(m for m in range(1, step) if m % EVERY == 0 or m % 19 == 0)
    assert start["global_step"] == latest, f"{drawn}: resumed from {start}"
    assert_identical(run_dir, shards_reference, f"data=shards, 2 workers, SIGKILL at step {step} ({drawn})")


def test_sigkill_under_ddp_then_resume_is_bit_identical(
    packed_digits: Path, shards_reference_ddp: Path, tmp_path: Path
) -> None:
    step, drawn = draw_step("shards_sigkill_ddp", EVERY + 1, STEPS - 2)
    run_dir = tmp_path / "run"
    args = shards_args(
        packed_digits, "data.num_workers=0", "trainer=ddp_cpu", f"callbacks.last_checkpoint.every_n_train_steps={EVERY}"
    )
    start = kill_and_resume(args, run_dir, step, drawn)
    latest = max(m for m in range(1, step) if m % EVERY == 0 or m % 19 == 0)
    assert start["global_step"] == latest, f"{drawn}: resumed from {start}"
    assert_identical(run_dir, shards_reference_ddp, f"data=shards, trainer=ddp_cpu, SIGKILL at step {step} ({drawn})")


# random 8x8 images, all different: 96 = 6 global batches of 16; ~1.8 kB a sample as the writer counts, so
# shards of 7 samples (the last of 5): neither a multiple of a rank's 8 images nor all equal
FAKE_TRAIN, FAKE_BATCH, FAKE_SHARD_BYTES = 96, 16, 12_000


@pytest.fixture(scope="module")
def packed_fake(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("fake") / "packed"
    overrides = ["data=fake", "data.img_size=8", f"data.train_size={FAKE_TRAIN}", f"data.batch_size={FAKE_BATCH}"]
    module = FakeDataModule(img_size=8, batch_size=FAKE_BATCH, train_size=FAKE_TRAIN)
    manifest = pack(module, str(out), source=source_of(overrides), shard_bytes=FAKE_SHARD_BYTES, progress=False)
    counts = [s["samples"] for s in manifest["splits"]["train"]["shards"]]
    assert len(set(counts)) > 1 and any(c % (FAKE_BATCH // 2) for c in counts), counts
    return out


def digest(image: torch.Tensor) -> str:
    return hashlib.sha256(image.numpy().tobytes()).hexdigest()


def samples_seen_per_rank(packed: Path, batch_size: int, epochs: int) -> tuple[list[list[list[int]]], int]:
    """`seen[epoch][rank]`: each rank's training samples (as indices of the split), read through the real
    `ShardsDataModule.train_dataloader()` with 2 workers, built per rank as Lightning's DDP builds it (a stand-in
    trainer with world_size 2, the rank and the CPU accelerator); and the steps of an epoch. Samples are known by
    their pixels: the training transform is the eval one here, so a sample's tensor identifies it."""
    seen: list[list[list[int]]] = [[] for _ in range(epochs)]
    steps = set()
    for rank in (0, 1):
        module = ShardsDataModule(root=str(packed), batch_size=batch_size, num_workers=2, img_size=8)
        trainer = SimpleNamespace(world_size=2, global_rank=rank, accelerator=CPUAccelerator())
        module.trainer = trainer  # type: ignore[assignment]
        module.seed = 7
        module.train_tf = module.eval_tf
        module.setup()
        index = {digest(module.train_set[i][0]): i for i in range(len(module.train_set))}
        assert len(index) == len(module.train_set) == FAKE_TRAIN, "the packed images are not all different"
        loader = module.train_dataloader()
        for epoch in range(epochs):
            loader.sampler.set_epoch(epoch)
            batches = list(loader)
            assert all(len(images) == batch_size // 2 for images, _ in batches), [len(b[0]) for b in batches]
            seen[epoch].append([index[digest(image)] for images, _ in batches for image in images])
            steps.add(len(batches))
        del loader  # its persistent workers end with it
    assert len(steps) == 1, f"the ranks ran different numbers of steps: {steps}"
    return seen, steps.pop()


def test_every_sample_once_per_epoch_over_the_ranks(packed_fake: Path) -> None:
    """A set that fills its global batches (96 = 6 x 16): in each epoch the two ranks together see every sample
    exactly once, and neither sees one the other does, whatever the shards' sample counts. A set that does not
    fill its last global batch (96 with a global batch of 20: 4 steps, 80 samples) drops the epoch's tail, taken
    from that epoch's permutation (`EpochSampler`, docs/resume.md): each sample at most once, exactly
    `steps x global batch` of them, and another tail the next epoch (no sample is left out of every epoch)."""
    seen, steps = samples_seen_per_rank(packed_fake, FAKE_BATCH, epochs=2)
    assert steps == FAKE_TRAIN // FAKE_BATCH
    for epoch, (rank0, rank1) in enumerate(seen):
        assert sorted(rank0 + rank1) == list(range(FAKE_TRAIN)), (epoch, rank0, rank1)
    assert seen[0] != seen[1], "two epochs in the same order"

    seen, steps = samples_seen_per_rank(packed_fake, 20, epochs=2)
    assert steps == FAKE_TRAIN // 20
    tails = []
    for epoch, (rank0, rank1) in enumerate(seen):
        both = rank0 + rank1
        assert len(both) == steps * 20 == len(set(both)), (epoch, rank0, rank1)
        tails.append(set(range(FAKE_TRAIN)) - set(both))
    assert tails[0] != tails[1], f"the same {len(tails[0])} samples dropped in both epochs: {sorted(tails[0])}"
