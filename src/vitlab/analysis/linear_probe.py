"""Linear probe: multinomial logistic regression on frozen features, fit full-batch with L-BFGS in torch.

The objective is scikit-learn's `LogisticRegression(C=c)` (lbfgs, multinomial for more than two classes):

    sum_i cross_entropy(W x_i + b, y_i) + 1 / (2 C) * ||W||^2        (the bias b is not penalised)

so the probe's weights and probabilities are scikit-learn's for the same features and C (tests/test_probes.py
checks this in float64). It is minimised divided by the number of samples (the same minimiser, better-scaled
gradients) from W = 0, b = 0 until the largest gradient entry is below `tol` or after `max_iter` iterations.

With two classes scikit-learn fits one weight vector (binomial loss); the softmax of two classes fitted here
with C gives the same probabilities as scikit-learn with 2C (the penalty is split between the two rows).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor


def standardise(reference: Tensor, *others: Tensor) -> list[Tensor]:
    """Features as the probes fit them: L2-normalised, centred on the mean of `reference` and divided by its
    root mean variance (one scale for every dimension, so a handful of few-shot images is enough to estimate
    it); `others` get the same map. Without the centring the component all features share (cosines of ~0.9
    between any two images of a barely trained ViT) leaves only tiny differences, which a regularised probe
    cannot separate; the k-NN vote needs no such step (it ranks similarities)."""
    normed = [F.normalize(f.float(), dim=1) for f in (reference, *others)]
    mean = normed[0].mean(dim=0, keepdim=True)
    scale = normed[0].var(dim=0, unbiased=False).mean().sqrt().clamp_min(1e-6) if len(reference) > 1 else 1.0
    return [(f - mean) / scale for f in normed]


@dataclass(frozen=True)
class LinearProbe:
    """A fitted probe: `weight` (C, D), `bias` (C,)."""

    weight: Tensor
    bias: Tensor

    def logits(self, features: Tensor) -> Tensor:
        return features.to(self.weight) @ self.weight.T + self.bias

    def predict_proba(self, features: Tensor) -> Tensor:
        return self.logits(features).softmax(dim=1)

    def predict(self, features: Tensor) -> Tensor:
        return self.logits(features).argmax(dim=1)

    def accuracy(self, features: Tensor, labels: Tensor) -> float:
        if len(features) == 0:
            return float("nan")
        return float((self.predict(features) == labels.to(self.weight.device)).float().mean())


def fit_linear_probe(
    features: Tensor,
    labels: Tensor,
    num_classes: int,
    c: float = 1.0,
    max_iter: int = 1000,
    tol: float | None = None,
    dtype: torch.dtype | None = None,
) -> LinearProbe:
    """Fit the probe (see the module docstring) on `features` (N, D) with `labels` (N,) in 0..num_classes-1,
    in `dtype` (default: the features' floating type) on the features' device. `c` > 0 is scikit-learn's C:
    larger is weaker regularisation. `tol` bounds the largest gradient entry of the objective divided by N; by
    default 1e-8 in float64 and 1e-5 in float32, whose rounding stalls L-BFGS below that (then it would only
    spend its `max_iter` iterations: seconds, instead of tens of milliseconds, for a 1000 x 192 probe)."""
    if c <= 0:
        raise ValueError(f"C must be > 0, got {c}")
    if len(features) == 0:
        raise ValueError("the linear probe needs at least one training sample")
    dtype = dtype or (features.dtype if features.dtype.is_floating_point else torch.float32)
    # Lightning runs validation and test hooks under torch.inference_mode(): leave it (and no_grad) for the fit,
    # with copies of the features (inference tensors cannot take part in autograd)
    with torch.inference_mode(False), torch.enable_grad():
        x, y = features.to(dtype).clone(), labels.to(features.device).long().clone()
        if tol is None:
            tol = 1e-8 if dtype == torch.float64 else 1e-5
        return _fit(x, y, num_classes, c, max_iter, tol)


def _fit(x: Tensor, y: Tensor, num_classes: int, c: float, max_iter: int, tol: float) -> LinearProbe:
    n, dim = x.shape
    dtype = x.dtype
    weight = torch.zeros(num_classes, dim, dtype=dtype, device=x.device, requires_grad=True)
    bias = torch.zeros(num_classes, dtype=dtype, device=x.device, requires_grad=True)
    optimizer = torch.optim.LBFGS(
        [weight, bias],
        lr=1.0,
        max_iter=max_iter,
        max_eval=max_iter * 2,
        tolerance_grad=tol,
        # stop on the gradient (as scikit-learn does); a loss that no longer changes at the type's precision
        # ends it too (float32 cannot reach every gradient tolerance)
        tolerance_change=torch.finfo(dtype).eps / 10,
        history_size=20,
        line_search_fn="strong_wolfe",
    )

    def closure() -> Tensor:
        optimizer.zero_grad()
        loss = F.cross_entropy(x @ weight.T + bias, y, reduction="sum") + weight.pow(2).sum() / (2 * c)
        loss = loss / n
        loss.backward()
        return loss

    optimizer.step(closure)
    return LinearProbe(weight.detach(), bias.detach())
