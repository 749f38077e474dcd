"""Feature probes (vitlab.analysis): k-NN against scikit-learn and a hand-computed vote, the linear probe against
scikit-learn's LogisticRegression, and the features being what the classifier's head sees.

Tolerances: k-NN predictions are compared exactly. The linear probe fit in float64 must give scikit-learn's
probabilities within 1e-5 and weights within 1e-4 (both minimise the same objective to tight tolerances; measured
differences are ~1e-7), and the same predictions; fit in float32 (what the callback uses), probabilities within 2e-3.
"""

from __future__ import annotations

import math
import random

import numpy as np
import pytest
import torch
from hydra.utils import instantiate
from sklearn.linear_model import LogisticRegression
from sklearn.neighbors import KNeighborsClassifier

from conftest import compose_cfg
from vitlab.analysis.features import (
    dataset_labels,
    eval_view,
    extract_features,
    feature_loader,
    frozen,
    pre_logits,
    rng_untouched,
    sample_indices,
)
from vitlab.analysis.knn import knn_accuracy, knn_predict
from vitlab.analysis.linear_probe import fit_linear_probe, standardise


def _clusters(n: int, dim: int, classes: int, seed: int, dtype=torch.float64) -> tuple[torch.Tensor, torch.Tensor]:
    """Overlapping Gaussian clusters: separable enough to learn, not so much that the fit runs off to infinity."""
    g = torch.Generator().manual_seed(seed)
    labels = torch.randint(0, classes, (n,), generator=g)
    centres = torch.randn(classes, dim, generator=g, dtype=dtype)
    return centres[labels] + 1.5 * torch.randn(n, dim, generator=g, dtype=dtype), labels


# ------------------------------------------------------------------------------------------------------ k-NN
@pytest.mark.parametrize("k", [1, 5, 8])
def test_unweighted_knn_equals_scikit_learn_cosine_neighbours(k: int) -> None:
    """Random features (no two similarities equal); with k=8 and 5 classes vote ties occur, and both pick the
    smallest label among the tied classes."""
    train, train_y = _clusters(300, 12, 5, seed=0, dtype=torch.float32)
    query, _ = _clusters(120, 12, 5, seed=1, dtype=torch.float32)
    ours = knn_predict(train, train_y, query, num_classes=5, k=k, weighted=False)
    sk = KNeighborsClassifier(n_neighbors=k, metric="cosine", algorithm="brute").fit(train.numpy(), train_y.numpy())
    np.testing.assert_array_equal(ours.numpy(), sk.predict(query.numpy()))


def test_weighted_votes_follow_exp_similarity_over_temperature() -> None:
    """Query (1, 0); class 0 has one neighbour at cosine 1, class 1 two at cosine 0.6. Class 0 wins when
    exp(1/T) > 2 exp(0.6/T), i.e. T < 0.4 / ln 2 = 0.577; a plain majority vote picks class 1."""
    reference = torch.tensor([[1.0, 0.0], [0.6, 0.8], [0.6, -0.8], [-1.0, 0.0]])
    labels = torch.tensor([0, 1, 1, 0])  # the 4th is the farthest: k=3 leaves it out
    query = torch.tensor([[1.0, 0.0]])
    crossover = 0.4 / math.log(2)
    assert knn_predict(reference, labels, query, 2, k=3, temperature=crossover - 0.05).item() == 0
    assert knn_predict(reference, labels, query, 2, k=3, temperature=crossover + 0.05).item() == 1
    assert knn_predict(reference, labels, query, 2, k=3, weighted=False).item() == 1
    # cosine: the lengths of the features do not matter
    assert knn_predict(5 * reference, labels, 0.1 * query, 2, k=3, temperature=crossover - 0.05).item() == 0
    # k beyond the references: all four vote, class 0 gains exp(-1/T) (still class 1 at T = 1)
    assert knn_predict(reference, labels, query, 2, k=50, temperature=1.0).item() == int(
        math.exp(1) + math.exp(-1) < 2 * math.exp(0.6)
    )


def test_vote_ties_go_to_the_smallest_class_and_accuracy_counts_hits() -> None:
    reference = torch.tensor([[1.0, 0.1], [1.0, -0.1]])  # equally similar to the query, one per class
    query = torch.tensor([[1.0, 0.0]])
    assert knn_predict(reference, torch.tensor([2, 1]), query, 3, k=2, weighted=False).item() == 1
    assert knn_predict(reference, torch.tensor([1, 2]), query, 3, k=2, weighted=False).item() == 1
    train, train_y = _clusters(200, 6, 3, seed=2, dtype=torch.float32)
    query, query_y = _clusters(50, 6, 3, seed=3, dtype=torch.float32)
    predicted = knn_predict(train, train_y, query, 3, k=5)
    assert knn_accuracy(train, train_y, query, query_y, 3, k=5) == pytest.approx((predicted == query_y).float().mean())


# ------------------------------------------------------------------------------------------------ linear probe
@pytest.mark.parametrize("c", [0.05, 1.0, 20.0])
def test_linear_probe_matches_scikit_learn_logistic_regression(c: float) -> None:
    x, y = _clusters(240, 10, 4, seed=4)
    probe = fit_linear_probe(x, y, num_classes=4, c=c, tol=1e-10, dtype=torch.float64)
    sk = LogisticRegression(C=c, tol=1e-12, max_iter=10_000).fit(x.numpy(), y.numpy())
    np.testing.assert_allclose(probe.predict_proba(x).numpy(), sk.predict_proba(x.numpy()), atol=1e-5)
    np.testing.assert_allclose(probe.weight.numpy(), sk.coef_, atol=1e-4)
    np.testing.assert_allclose(probe.bias.numpy(), sk.intercept_, atol=1e-4)
    np.testing.assert_array_equal(probe.predict(x).numpy(), sk.predict(x.numpy()))
    single = fit_linear_probe(x.float(), y, num_classes=4, c=c)  # the callback's precision
    np.testing.assert_allclose(single.predict_proba(x.float()).double().numpy(), sk.predict_proba(x.numpy()), atol=2e-3)


def test_two_classes_match_scikit_learn_with_twice_c() -> None:
    """scikit-learn fits one weight vector for two classes; the softmax of two rows splits the penalty."""
    x, y = _clusters(150, 5, 2, seed=5)
    probe = fit_linear_probe(x, y, num_classes=2, c=0.5, tol=1e-10)
    sk = LogisticRegression(C=1.0, tol=1e-12, max_iter=10_000).fit(x.numpy(), y.numpy())
    np.testing.assert_allclose(probe.predict_proba(x).numpy(), sk.predict_proba(x.numpy()), atol=1e-5)


def test_the_probe_fits_inside_inference_mode() -> None:
    """Lightning's validation and test hooks run under torch.inference_mode()."""
    x, y = _clusters(80, 4, 3, seed=6)
    reference = fit_linear_probe(x, y, 3, tol=1e-10)
    with torch.inference_mode():
        inside = fit_linear_probe(x, y, 3, tol=1e-10)
    torch.testing.assert_close(inside.weight, reference.weight)


def test_standardise_centres_and_scales_on_the_reference() -> None:
    x, _ = _clusters(100, 8, 3, seed=7)
    other = torch.randn(20, 8, dtype=torch.float64)
    ref, moved = standardise(x + 10.0, other)  # a large shared component, as features of a young ViT have
    assert ref.mean(0).abs().max() < 1e-5 and ref.var(0, unbiased=False).mean().item() == pytest.approx(1.0)
    normed = torch.nn.functional.normalize(x + 10.0, dim=1)
    scale = normed.var(0, unbiased=False).mean().sqrt()
    expected = (torch.nn.functional.normalize(other, dim=1) - normed.mean(0)) / scale
    torch.testing.assert_close(moved, expected.float(), rtol=1e-5, atol=1e-5)


# ------------------------------------------------------------------------------------------------ features
@pytest.mark.parametrize("head", [None, "linear"])
def test_features_are_what_the_head_sees(head: str | None) -> None:
    overrides = ["tiny=model"] + ([f"model/head={head}"] if head else [])
    model = instantiate(compose_cfg(overrides).model, num_classes=5).eval()
    x = torch.randn(3, 3, 16, 16)
    with torch.no_grad():
        last = model.backbone.get_classifier() if head is None else model.head.fc
        torch.testing.assert_close(last(pre_logits(model, x)), model(x))


def test_extraction_is_frozen_in_order_and_leaves_training_as_it_was() -> None:
    from vitlab.data.digits import DigitsDataModule

    dm = DigitsDataModule(img_size=16)
    dm.setup()
    model = instantiate(compose_cfg(["tiny=model"]).model, num_classes=10)
    model.train()
    model.backbone.blocks[0].eval()  # a submodule kept in eval mode (as PEFT methods do) stays so
    view = eval_view(dm.train_set, dm.val_set)
    assert view is not None and view.transform is None and dm.train_set.transform is not None  # type: ignore[attr-defined]
    states = (random.getstate(), np.random.get_state()[1].copy(), torch.get_rng_state())
    with rng_untouched():
        feats, labels = extract_features(model, feature_loader(view, batch_size=64))
        random.random(), np.random.rand(), torch.rand(3), dm.train_set[0]  # draws, then put back
    assert random.getstate() == states[0] and np.array_equal(np.random.get_state()[1], states[1])
    assert torch.equal(torch.get_rng_state(), states[2])
    assert model.training and not model.backbone.blocks[0].training and model.backbone.blocks[1].training
    assert torch.equal(labels, dataset_labels(dm.train_set)) and torch.equal(labels, dm.train_set.labels)  # type: ignore[attr-defined]
    with frozen(model):
        expected = pre_logits(model, dm.train_set.images[:5])  # type: ignore[attr-defined]
    torch.testing.assert_close(feats[:5], expected)
    assert not feats.requires_grad and feats.shape == (len(dm.train_set), 32)


def test_sample_indices_are_a_fixed_sorted_draw() -> None:
    assert sample_indices(10, None) is None and sample_indices(10, 10) is None
    drawn = sample_indices(1000, 50, seed=3)
    assert drawn == sample_indices(1000, 50, seed=3) and drawn == sorted(set(drawn)) and len(drawn) == 50
    assert max(drawn) > 500  # not a prefix: a set sorted by class keeps its later classes
