"""Drop-path (stochastic depth) drawn from each sample's own seed, so 1 process and N processes drop the same paths.

timm's `DropPath` draws one Bernoulli(keep) per sample from the process's generator. Under DDP each rank draws
for its own slice of the global batch, so the same image gets another mask on 2 processes than on 1, and the
runs part (docs/resume.md#what-is-exact-and-why). `SeededDropPath` draws the same Bernoulli(keep) — the same
`x · mask / keep` — from a hash of (the sample's seed, the drop-path site), where the sample seed is the one the
training sampler pairs with the image (`vitlab.data.sampling.EpochSampler`: (run seed, epoch, image index)).
A mask then depends on which image it is, in which epoch and at which block, not on the rank, the number of
processes, or what ran before: a resumed run draws what the uninterrupted run drew.

The seeds reach the model through a module-level context: `vitlab.training.determinism.StepSeeding` sets the
training batch's seeds before each training step (`set_sample_seeds`) and clears them after it (and on any
exception). Outside a seeded step — a model used on its own, Lightning's `overfit_batches` (which replaces
the sampler) — the context is empty and the module draws from the global generator exactly as timm does.
In evaluation mode it is the identity, as timm's.

The hash is SplitMix64, the same as `vitlab.data.sampling.mix_seed` (models may not import data; a test
checks the two agree), vectorised over the batch in NumPy's wrapping uint64 arithmetic.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager

import numpy as np
import torch
from timm.layers import DropPath
from torch import Tensor, nn

# a stream tag mixed into every drop-path draw, so these bits are unrelated to the sample's augmentation,
# which seeds torch's generator with the sample seed itself
DROP_PATH_STREAM = 0xD209_9A7B

_GOLDEN, _M1, _M2 = np.uint64(0x9E3779B97F4A7C15), np.uint64(0xBF58476D1CE4E5B9), np.uint64(0x94D049BB133111EB)
_S31, _S27, _S29, _ONE, _S10 = (np.uint64(n) for n in (31, 27, 29, 1, 10))

# The per-sample seeds of the training batch being computed by this process (None: no seeded step).
_sample_seeds: np.ndarray | None = None


def mix_seeds(parts: Sequence[np.ndarray | int]) -> np.ndarray:
    """`vitlab.data.sampling.mix_seed` applied element-wise: each part an int or a uint64 array (broadcast)."""
    state = np.full(np.broadcast(*[np.asarray(p) for p in parts]).shape, _GOLDEN, dtype=np.uint64)
    for part in parts:
        # an int is taken modulo 2**64, as mix_seed masks it
        part = np.asarray(part, dtype=np.uint64) if isinstance(part, np.ndarray) else np.uint64(int(part) % 2**64)
        state = (state ^ part) * _M1
        state = (state ^ (state >> _S31)) * _M2
        state ^= state >> _S29
    return state >> _ONE


def site_uniforms(seeds: np.ndarray, site: int) -> np.ndarray:
    """Uniform numbers in [0, 1), one per sample seed, for drop-path site `site` (53 bits of the hash)."""
    bits = mix_seeds([seeds, DROP_PATH_STREAM, site]) >> _S10  # 63 -> 53 bits: exactly representable
    return bits.astype(np.float64) * 2.0**-53


def set_sample_seeds(seeds: Sequence[int] | np.ndarray | None) -> None:
    """Set (or with None clear) the per-sample seeds that `SeededDropPath` draws from in this process."""
    global _sample_seeds
    _sample_seeds = None if seeds is None else np.asarray([int(s) for s in seeds], dtype=np.uint64)


def current_sample_seeds() -> np.ndarray | None:
    """The seeds set by `set_sample_seeds`, or None outside a seeded training step."""
    return _sample_seeds


@contextmanager
def sample_seeds(seeds: Sequence[int] | np.ndarray | None) -> Iterator[None]:
    """Run a block with these per-sample seeds set; the previous ones are put back afterwards."""
    before = _sample_seeds
    set_sample_seeds(seeds)
    try:
        yield
    finally:
        set_sample_seeds(before)


class SeededDropPath(DropPath):
    """timm's `DropPath` (same `drop_prob`, `scale_by_keep`, same distribution) drawing each sample's keep/drop
    from (its seed, `site`); `site` numbers the drop-path modules of a model, so two blocks draw independently."""

    def __init__(self, drop_prob: float = 0.0, scale_by_keep: bool = True, site: int = 0) -> None:
        super().__init__(drop_prob=drop_prob, scale_by_keep=scale_by_keep)
        self.site = int(site)

    def forward(self, x: Tensor) -> Tensor:
        if self.drop_prob == 0.0 or not self.training:
            return x
        return x * self._mask(x)

    @torch.compiler.disable  # host-side hashing of the batch's seeds; compiled models call it eagerly
    def _mask(self, x: Tensor) -> Tensor:
        keep = 1.0 - self.drop_prob
        shape = (x.shape[0],) + (1,) * (x.ndim - 1)
        seeds = _sample_seeds
        if seeds is None:  # not inside a seeded training step: timm's own draw
            mask = x.new_empty(shape).bernoulli_(keep)
        else:
            if len(seeds) != x.shape[0]:
                raise RuntimeError(
                    f"SeededDropPath (site {self.site}) got a batch of {x.shape[0]} samples but {len(seeds)} "
                    "sample seeds are set: the seeds belong to another batch (see vitlab.models.seeded_drop_path)."
                )
            kept = torch.from_numpy(site_uniforms(seeds, self.site) < keep)
            mask = kept.to(device=x.device, dtype=x.dtype, non_blocking=True).view(shape)
        if keep > 0.0 and self.scale_by_keep:
            mask = mask.div_(keep)
        return mask

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, site={self.site}"


def install_seeded_drop_path(model: nn.Module) -> int:
    """Replace every timm `DropPath` in `model` by a `SeededDropPath` of the same rate, numbered in module order;
    forward hooks on a replaced module (e.g. AdaptFormer's on `drop_path2`) move to its replacement. Returns
    the number of drop-path sites (modules already seeded keep their place in the numbering)."""
    site = 0
    for _, parent in list(model.named_modules()):
        for name, child in list(parent.named_children()):
            if not isinstance(child, DropPath):
                continue
            if not isinstance(child, SeededDropPath):
                seeded = SeededDropPath(child.drop_prob, child.scale_by_keep, site=site)
                seeded.train(child.training)
                # the hook dictionaries themselves, so handles returned earlier still remove them
                seeded._forward_hooks = child._forward_hooks
                seeded._forward_hooks_with_kwargs = child._forward_hooks_with_kwargs
                seeded._forward_hooks_always_called = child._forward_hooks_always_called
                seeded._forward_pre_hooks = child._forward_pre_hooks
                seeded._forward_pre_hooks_with_kwargs = child._forward_pre_hooks_with_kwargs
                setattr(parent, name, seeded)
            else:
                child.site = site
            site += 1
    return site
