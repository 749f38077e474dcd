"""Drop-path drawn from each sample's own seed (vitlab.models.seeded_drop_path): timm's distribution, the identity in
eval, a mask that depends on the image and not on how the batch is split over processes, installed in every
model composition, and the hand-off of a training batch's seeds from the sampler to the model (StepSeeding)."""

from __future__ import annotations

import random
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from hydra.utils import instantiate
from timm.layers import DropPath

from conftest import CONFIGS, compose_cfg
from vitlab.data.sampling import EpochSampler, mix_seed
from vitlab.models.seeded_drop_path import (
    DROP_PATH_STREAM,
    SeededDropPath,
    current_sample_seeds,
    mix_seeds,
    sample_seeds,
    site_uniforms,
)
from vitlab.training.determinism import StepSeeding

_RNG = random.Random(7)
SEEDS = [_RNG.getrandbits(63) for _ in range(4000)]


def expected_output(x: torch.Tensor, seeds: list[int], site: int, drop_prob: float) -> torch.Tensor:
    """The formula, in plain Python: sample i is kept iff u_i < keep, u_i = the top 53 bits of
    mix_seed(seed_i, DROP_PATH_STREAM, site) / 2**53; kept samples are scaled by 1/keep, dropped ones are 0."""
    keep = 1.0 - drop_prob
    kept = [(mix_seed(s, DROP_PATH_STREAM, site) >> 10) / 2.0**53 < keep for s in seeds]
    scale = torch.ones((), dtype=x.dtype) / keep  # timm divides the mask by keep, then multiplies
    return torch.stack([x[i] * scale if k else torch.zeros_like(x[i]) for i, k in enumerate(kept)])


def test_the_vectorised_hash_is_vitlab_data_mix_seed() -> None:
    seeds = np.asarray(SEEDS[:200], dtype=np.uint64)
    for site in (0, 1, 17):
        got = mix_seeds([seeds, DROP_PATH_STREAM, site])
        assert got.tolist() == [mix_seed(s, DROP_PATH_STREAM, site) for s in SEEDS[:200]]
    u = site_uniforms(seeds, 3)
    assert u.dtype == np.float64 and (u >= 0).all() and (u < 1).all()


@pytest.mark.parametrize("drop_prob", [0.1, 0.5])
def test_a_seeded_mask_is_the_formula_and_timm_s_distribution(drop_prob: float) -> None:
    x = torch.randn(len(SEEDS), 3, 2)
    module = SeededDropPath(drop_prob, site=5).train()
    with sample_seeds(SEEDS):
        out = module(x)
    assert torch.equal(out, expected_output(x, SEEDS, 5, drop_prob))
    keep = 1.0 - drop_prob
    kept = (out != 0).flatten(1).all(dim=1).float()
    sigma = (keep * (1 - keep) / len(SEEDS)) ** 0.5
    assert abs(kept.mean().item() - keep) < 4.5 * sigma, kept.mean()  # Bernoulli(keep) per sample, as timm's
    torch.manual_seed(0)
    timm_kept = (DropPath(drop_prob).train()(torch.ones(len(SEEDS), 1)) != 0).float().mean().item()
    assert abs(timm_kept - keep) < 4.5 * sigma and abs(kept.mean().item() - timm_kept) < 6.5 * sigma


def test_sites_draw_independently_and_another_epoch_draws_anew() -> None:
    a = site_uniforms(np.asarray(SEEDS, dtype=np.uint64), 0) < 0.5
    b = site_uniforms(np.asarray(SEEDS, dtype=np.uint64), 1) < 0.5
    both = (a & b).mean()
    assert abs(both - 0.25) < 4.5 * (0.25 * 0.75 / len(SEEDS)) ** 0.5, both  # P(kept at both) = keep², not keep
    epoch_1 = [mix_seed(0, 1, i) for i in range(len(SEEDS))]  # the sampler's seeds: (run seed, epoch, index)
    epoch_2 = [mix_seed(0, 2, i) for i in range(len(SEEDS))]
    assert (site_uniforms(np.asarray(epoch_1, dtype=np.uint64), 0) < 0.5).tolist() != (
        site_uniforms(np.asarray(epoch_2, dtype=np.uint64), 0) < 0.5
    ).tolist()


def test_eval_is_the_identity_and_without_seeds_it_is_timm_s_draw() -> None:
    x = torch.randn(64, 5, 8)
    seeded, stock = SeededDropPath(0.3, site=2), DropPath(0.3)
    with sample_seeds(SEEDS[:64]):
        assert seeded.eval()(x) is x
    seeded.train(), stock.train()
    torch.manual_seed(11)
    want = stock(x)
    torch.manual_seed(11)
    assert current_sample_seeds() is None and torch.equal(seeded(x), want)  # outside a seeded step: timm's
    assert SeededDropPath(0.0, site=2).train()(x) is x


def test_a_sample_s_mask_does_not_depend_on_how_the_batch_is_split() -> None:
    """One process with the global batch, two with half each: the same masks per image; gradients flow."""
    torch.manual_seed(0)
    model = instantiate(compose_cfg(["tiny=model", "model.backbone.drop_path_rate=0.5"]).model, num_classes=5)
    model.train()
    x, seeds = torch.randn(8, 3, 16, 16), SEEDS[:8]
    with sample_seeds(seeds):
        whole = model(x)
    with sample_seeds(seeds[:4]):
        first = model(x[:4])
    with sample_seeds(seeds[4:]):
        second = model(x[4:])
    torch.testing.assert_close(torch.cat([first, second]), whole, rtol=1e-5, atol=1e-6)
    with sample_seeds(SEEDS[8:16]):
        other = model(x)
    assert not torch.allclose(other, whole)  # other images' seeds, other paths dropped
    with sample_seeds(seeds):
        model(x).sum().backward()
    assert all(p.grad is not None for p in model.parameters() if p.requires_grad)


def test_a_batch_of_another_size_than_its_seeds_is_an_error() -> None:
    with sample_seeds(SEEDS[:3]), pytest.raises(RuntimeError, match="3 sample seeds"):
        SeededDropPath(0.2, site=1).train()(torch.ones(4, 2))


def _model_options() -> list[str]:
    slots = ("stem", "mixer", "pos_embed", "step_size", "head", "peft")
    options = [
        f"model/{slot}={p.stem}" for slot in slots for p in sorted((CONFIGS / "model" / slot).glob("[!_]*.yaml"))
    ]
    return [*options, "model=eit_cifar", "model=eit_mini"]


@pytest.mark.parametrize("option", _model_options())
def test_every_drop_path_of_every_composition_is_seeded(option: str) -> None:
    """Stock timm blocks, vitlab's mixers, step sizes, EIT, heads and PEFT wrappers: no unseeded DropPath, one
    site number each, and forward hooks on a replaced module (AdaptFormer's on drop_path2) kept."""
    overrides = [option, "tiny=model", "model.backbone.drop_path_rate=0.2", "model.backbone.depth=3"]
    if option.startswith("model=eit"):
        overrides = [option, "data.img_size=32", "model.backbone.drop_path_rate=0.2"]
    model = instantiate(compose_cfg(overrides).model, num_classes=5)
    drop_paths = [m for m in model.modules() if isinstance(m, DropPath)]
    assert drop_paths and all(type(m) is SeededDropPath for m in drop_paths), option
    assert sorted(m.site for m in drop_paths) == list(range(len(drop_paths))), option
    if option == "model/peft=adaptformer":
        assert all(len(block.drop_path2._forward_hooks) == 1 for block in model.backbone.blocks[1:])


def sampler_trainer(sampler: EpochSampler, epoch: int) -> SimpleNamespace:
    """What StepSeeding reads of a trainer: the epoch, the rank and the training loader's sampler."""
    sampler.set_epoch(epoch)
    loader = SimpleNamespace(sampler=sampler)
    return SimpleNamespace(current_epoch=epoch, global_rank=sampler.rank, train_dataloader=loader)


def test_step_seeding_hands_the_batch_s_own_sample_seeds_to_the_model() -> None:
    """Batch b of a rank gets the seeds its sampler yielded with those images; rank 0's and rank 1's halves
    together are the one-process batch; the seeds are cleared after the step and on an exception."""
    data = list(range(100))
    one = EpochSampler(data, per_rank_batch=8, seed=3)
    ranks = [EpochSampler(data, per_rank_batch=4, num_replicas=2, rank=r, seed=3) for r in (0, 1)]
    callback = StepSeeding(3)
    for epoch in (0, 2):
        yielded = [seed for _, seed in sampler_trainer(one, epoch).train_dataloader.sampler]
        for batch in range(len(one) // 8):
            want = yielded[batch * 8 : (batch + 1) * 8]
            callback.on_train_batch_start(sampler_trainer(one, epoch), None, [torch.zeros(8)], batch)
            assert current_sample_seeds().tolist() == want
            halves = []
            for sampler in ranks:
                callback.on_train_batch_start(sampler_trainer(sampler, epoch), None, [torch.zeros(4)], batch)
                halves += current_sample_seeds().tolist()
            assert halves == want, (epoch, batch)
            callback.on_train_batch_end(sampler_trainer(one, epoch), None, None, None, batch)
            assert current_sample_seeds() is None
    with pytest.raises(RuntimeError, match="holds 5 samples"):
        callback.on_train_batch_start(sampler_trainer(one, 0), None, [torch.zeros(5)], 0)
    callback.on_train_batch_start(sampler_trainer(one, 0), None, [torch.zeros(8)], 0)
    callback.on_exception(sampler_trainer(one, 0), None, RuntimeError("boom"))
    assert current_sample_seeds() is None
    overfit = SimpleNamespace(current_epoch=0, global_rank=0, train_dataloader=SimpleNamespace(sampler=None))
    callback.on_train_batch_start(overfit, None, [torch.zeros(8)], 0)  # Lightning's overfit_batches sampler
    assert current_sample_seeds() is None
