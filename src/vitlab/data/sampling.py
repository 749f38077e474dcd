"""Training order and augmentation randomness that are functions of position, not of history.

Exact resume (docs/resume.md) needs the rest of training to be decided by what a checkpoint holds. Three
pieces make the data side of that true:

- `EpochSampler`: the order of epoch `e` is a permutation drawn from `(seed, e)` alone. Step `s` of that
  epoch trains on the same *global* batch `order[s·B : (s+1)·B]` whatever the number of processes: rank `r`
  of `W` takes the `r`-th slice of `B / W` images, so 1 process and `trainer=ddp_cpu` see the same images
  per optimiser step (the epoch's tail that does not fill a global batch is dropped).
- Every index comes with a *sample seed* drawn from `(seed, epoch, index)`, and `SeededSamples` runs the
  dataset's transform under it: the random crop, RandAugment op or affine warp of an image depends on which
  image it is and in which epoch, not on the worker, the rank, or what ran before. The same seeds, for a
  batch (`EpochSampler.batch_seeds`), seed the drop-path masks inside the model
  (`vitlab.models.seeded_drop_path`).
- `ResumableLoader` counts the batches it has handed out and is *stateful* for Lightning (it has
  `state_dict` / `load_state_dict`), so a checkpoint written in the middle of an epoch records how far the
  epoch went and the resumed run starts at the next batch: nothing repeated, nothing skipped.
"""

from __future__ import annotations

import random
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, DistributedSampler, get_worker_info

from vitlab.errors import ConfigError

_MASK64 = (1 << 64) - 1


def mix_seed(*parts: int) -> int:
    """A 63-bit seed from integers (SplitMix64 steps): nearby inputs give unrelated seeds, every run alike."""
    state = 0x9E3779B97F4A7C15
    for part in parts:
        state = (state ^ (int(part) & _MASK64)) * 0xBF58476D1CE4E5B9 & _MASK64
        state = (state ^ (state >> 31)) * 0x94D049BB133111EB & _MASK64
        state ^= state >> 29
    return state >> 1


def _seed_all(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    # the CPU generator only: torch.manual_seed also queues a lazy CUDA seeding with a formatted stack trace,
    # ~0.6 ms per call, which per sample was ~5 % of a training step on the CPU (vitlab-bench overhead)
    torch.default_generator.manual_seed(seed)


@contextmanager
def seeded_rng(seed: int) -> Iterator[None]:
    """Run a block with Python's, NumPy's and torch's CPU generators seeded from `seed`, then put them back.

    In a DataLoader worker nothing but the samples draws from the process's generators, and every sample seeds
    them first, so there is nothing to put back: saving and restoring the three states (NumPy's alone is 2.5 KB)
    cost ~0.25 ms per image, about 5 % of a 224 px training transform (docs/performance.md, Input pipeline)."""
    if get_worker_info() is not None:
        _seed_all(seed)
        yield
        return
    py_state, np_state, torch_state = random.getstate(), np.random.get_state(), torch.get_rng_state()
    _seed_all(seed)
    try:
        yield
    finally:
        random.setstate(py_state)
        np.random.set_state(np_state)
        torch.set_rng_state(torch_state)


class SeededSamples(Dataset):
    """`dataset[index]` computed under the sample seed that `EpochSampler` pairs with each index."""

    def __init__(self, dataset: Dataset) -> None:
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)  # type: ignore[arg-type]

    def __getitem__(self, key: int | tuple[int, int]) -> Any:
        if not isinstance(key, tuple):  # a plain index (e.g. Lightning's overfit_batches sampler): no seed
            return self.dataset[key]
        index, seed = key
        with seeded_rng(seed):
            return self.dataset[index]


class EpochSampler(DistributedSampler):
    """Yields `(index, sample_seed)` for one rank; see the module docstring.

    A `DistributedSampler` subclass, so Lightning neither replaces it under DDP nor forgets to call
    `set_epoch`. `per_rank_batch` is the loader's batch size: global batch `B = per_rank_batch × world`.
    """

    def __init__(
        self,
        dataset: Dataset,
        per_rank_batch: int,
        num_replicas: int = 1,
        rank: int = 0,
        seed: int = 0,
        split: int = 1,
    ) -> None:
        super().__init__(dataset, num_replicas=num_replicas, rank=rank, shuffle=True, seed=seed, drop_last=True)
        self.per_rank_batch = per_rank_batch
        self.skip = 0  # samples of this rank already consumed in `self.epoch` (set by a mid-epoch resume)
        # `split` > 1: each batch of the run's overrides is loaded as `split` micro-batches (an out-of-memory
        # retry, docs/runs.md#retries); the epoch keeps whole original batches, so it holds the same images
        n, global_batch = len(dataset), per_rank_batch * num_replicas * split  # type: ignore[arg-type]
        if n < num_replicas:
            raise ConfigError(
                f"the training set has {n} images, fewer than the {num_replicas} processes (trainer.devices x "
                "trainer.num_nodes); use fewer processes or more training data."
            )
        if n >= global_batch:
            self.steps, self.rank_batch = n // global_batch * split, per_rank_batch
        else:  # a data set smaller than one global batch: one step, split evenly, remainder dropped
            whole = max(1, n // num_replicas)
            self.steps, self.rank_batch = (split, whole // split) if whole >= split else (1, whole)
        self.num_samples = self.steps * self.rank_batch
        self.total_size = self.num_samples * num_replicas
        self._indices_cache: tuple[int, list[int]] | None = None

    def set_epoch(self, epoch: int) -> None:
        if epoch != self.epoch:
            self.skip = 0  # a resume position belongs to the epoch it was recorded in
        self.epoch = epoch

    def order(self, epoch: int) -> torch.Tensor:
        """The global order of `epoch`: a function of (seed, epoch) only."""
        generator = torch.Generator().manual_seed(mix_seed(self.seed, epoch))
        return torch.randperm(len(self.dataset), generator=generator)  # type: ignore[arg-type]

    def rank_indices(self, epoch: int) -> list[int]:
        """This rank's indices for the whole epoch, step after step."""
        order = self.order(epoch)[: self.total_size].view(self.steps, self.num_replicas, self.rank_batch)
        return order[:, self.rank].reshape(-1).tolist()

    def sample_seed(self, epoch: int, index: int) -> int:
        """The seed of image `index` in `epoch`: its augmentation, and its drop-path masks inside the model."""
        return mix_seed(self.seed, epoch, index)

    def batch_seeds(self, epoch: int, batch: int) -> list[int]:
        """The sample seeds of this rank's batch number `batch` of `epoch`, in the batch's order (what
        `vitlab.training.determinism.StepSeeding` hands to the model; the same images as `__iter__` yields)."""
        if self._indices_cache is None or self._indices_cache[0] != epoch:  # one permutation per epoch, not per step
            self._indices_cache = (epoch, self.rank_indices(epoch))
        indices = self._indices_cache[1][batch * self.rank_batch : (batch + 1) * self.rank_batch]
        return [self.sample_seed(epoch, index) for index in indices]

    def __iter__(self) -> Iterator[tuple[int, int]]:  # type: ignore[override]
        epoch, skip = self.epoch, self.skip
        self.skip = 0  # consumed: the next pass over this epoch (if any) starts at its beginning
        for index in self.rank_indices(epoch)[skip:]:
            yield index, self.sample_seed(epoch, index)

    def __len__(self) -> int:
        return self.num_samples


class ResumableLoader(DataLoader):
    """A training `DataLoader` whose position inside the epoch is part of the checkpoint.

    The count is of batches *handed out by this iterator*: Lightning does not pre-fetch from a loader with a
    length, so at a checkpoint it equals the batches the trainer consumed (worker pre-fetching happens
    behind the iterator and is not counted). With another sampler (Lightning swaps in a sequential one for
    `overfit_batches`) it is a plain loader with an empty state.
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.batches_done = 0

    def __iter__(self) -> Iterator[Any]:
        sampler = self.sampler
        # a resumed epoch starts after the batches the sampler skips: they count as done
        skipped = sampler.skip // sampler.rank_batch if isinstance(sampler, EpochSampler) else 0
        self.batches_done = skipped
        for batch in super().__iter__():
            self.batches_done += 1
            yield batch

    def state_dict(self) -> dict[str, int]:
        """The position, also in samples of this rank (`samples_done`, with the `rank_batch` it was counted
        in): a run continued with a smaller micro-batch (an out-of-memory retry) starts at the same image."""
        if not isinstance(self.sampler, EpochSampler):
            return {}
        rank_batch = int(self.sampler.rank_batch)
        done = int(self.batches_done)
        return {"epoch": int(self.sampler.epoch), "batches_done": done, "samples_done": done * rank_batch,
                "rank_batch": rank_batch}  # fmt: skip

    def load_state_dict(self, state: dict[str, int]) -> None:
        if not state or not isinstance(self.sampler, EpochSampler):
            return
        rank_batch = self.sampler.rank_batch
        epoch = int(state["epoch"])
        # checkpoints from before samples_done counted batches of the loader's current size
        samples = int(state.get("samples_done", int(state["batches_done"]) * rank_batch))
        if samples >= self.sampler.num_samples:  # saved at the end of an epoch: continue at the next one's start
            epoch, samples = epoch + 1, 0
        self.sampler.set_epoch(epoch)
        self.sampler.skip = samples
        self.batches_done = samples // rank_batch
