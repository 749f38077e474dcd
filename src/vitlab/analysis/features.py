"""Frozen features of a model: what its classification head sees, for the images of a data set, in order.

The probes (k-NN, linear, few-shot) judge the backbone, not the head: each image's *pre-logits* vector, the
pooled token after the final norm (timm's `forward_head(..., pre_logits=True)`, or the pooling of a vitlab head
such as `heads.linear` / `heads.memory_ode`). Features are computed in eval mode under `torch.no_grad()`, and
reading them must leave training exactly as it was (bit-identical resume, docs/resume.md):

- `eval_view` reads training images through the *evaluation* transform (no random crop, no flip), so the
  reference features are those of the images themselves, the same every time;
- `feature_loader` is a plain loader in a fixed order with its own generator (a DataLoader iterator otherwise
  draws its base seed from torch's global generator), never the run's resumable training loader;
- `rng_untouched` puts Python's, NumPy's and torch's generators back afterwards, whatever a transform drew.
"""

from __future__ import annotations

import copy
import random
from collections.abc import Iterator
from contextlib import contextmanager

import numpy as np
import torch
from torch import Tensor, nn
from torch.utils.data import DataLoader, Dataset, Subset

from vitlab.data.fingerprint import unwrap
from vitlab.models.heads.linear import pool_tokens


def pre_logits(model: nn.Module, x: Tensor) -> Tensor:
    """(B, D) features a `Classifier`'s head receives before its last linear map (see the module docstring).

    A vitlab head that pools (`pool`, `num_prefix_tokens`) is given the normalised token sequence: its pooling
    is applied here. timm's own head (or any other) gets timm's pooling and `fc_norm`. A backbone built without
    pooling (`global_pool=''`) would return tokens: their mean is taken then."""
    backbone = model.backbone  # type: ignore[attr-defined]
    tokens = backbone.forward_features(x)
    head = getattr(model, "head", None)
    if head is not None and hasattr(head, "pool") and hasattr(head, "num_prefix_tokens"):
        return pool_tokens(tokens, head.pool, head.num_prefix_tokens)
    features = backbone.forward_head(tokens, pre_logits=True)
    return features.mean(dim=1) if features.ndim == 3 else features


@contextmanager
def frozen(model: nn.Module) -> Iterator[nn.Module]:
    """`model` in eval mode without gradients for the block; every submodule's own train/eval flag is put back
    after it (a plain `model.train()` would also switch on submodules a PEFT method keeps in eval mode)."""
    flags = {m: m.training for m in model.modules()}
    model.eval()
    try:
        with torch.no_grad():
            yield model
    finally:
        for module, training in flags.items():
            module.training = training


@contextmanager
def rng_untouched() -> Iterator[None]:
    """Run a block, then put Python's, NumPy's and torch's (CPU and CUDA) generators back as they were."""
    py_state, np_state = random.getstate(), np.random.get_state()
    devices = list(range(torch.cuda.device_count())) if torch.cuda.is_initialized() else []
    with torch.random.fork_rng(devices=devices):
        try:
            yield
        finally:
            random.setstate(py_state)
            np.random.set_state(np_state)


def eval_view(train_set: Dataset, eval_set: Dataset) -> Dataset | None:
    """The images of `train_set` read through the transform of `eval_set` (a validation or test split, which
    every vitlab data module reads without augmentation); None when the transform cannot be swapped (a set
    without a `transform` attribute), so the caller reads `train_set` as it is."""
    base, indices = unwrap(train_set)
    eval_base, _ = unwrap(eval_set)
    if not (hasattr(base, "transform") and hasattr(eval_base, "transform")):
        return None
    view = copy.copy(base)  # shallow: the samples and arrays are shared, only the transform differs
    view.transform = eval_base.transform  # type: ignore[attr-defined]
    if hasattr(base, "transforms") and hasattr(eval_base, "transforms"):  # torchvision's (image, target) pair
        view.transforms = eval_base.transforms  # type: ignore[attr-defined]
    return Subset(view, indices) if isinstance(train_set, Subset) else view


def dataset_labels(dataset: Dataset) -> Tensor:
    """Every label of `dataset` (int64), read without decoding images where the set keeps its labels."""
    from vitlab.data.torchvision_sets import labels_of

    base, indices = unwrap(dataset)
    labels = torch.as_tensor(np.asarray(labels_of(base)), dtype=torch.long)
    return labels[torch.as_tensor(indices, dtype=torch.long)]


def sample_indices(size: int, limit: int | None, seed: int = 0) -> list[int] | None:
    """At most `limit` of `range(size)`, drawn with a private generator (a set sorted by class must not lose
    whole classes to a prefix) and sorted; None (all) when `limit` is None or not below `size`."""
    if limit is None or limit >= size:
        return None
    generator = torch.Generator().manual_seed(seed)
    return torch.randperm(size, generator=generator)[:limit].sort().values.tolist()


def feature_loader(dataset: Dataset, batch_size: int, num_workers: int = 0) -> DataLoader:
    """A loader over `dataset` in order, with its own generator: reading it draws nothing from the global one."""
    return DataLoader(
        dataset,
        batch_size=batch_size,
        shuffle=False,
        num_workers=num_workers,
        generator=torch.Generator().manual_seed(0),
    )


def extract_features(model: nn.Module, loader: DataLoader) -> tuple[Tensor, Tensor]:
    """(features (N, D) float32, labels (N,) int64) of every batch of `loader`, in the loader's order, on the
    model's device; the model is frozen (`frozen`) while they are computed."""
    param = next(model.parameters())
    features, labels = [], []
    with frozen(model):
        for x, y in loader:
            x = x.to(param.device, dtype=param.dtype, non_blocking=True)  # bf16-true models take bf16 images
            features.append(pre_logits(model, x).float())
            labels.append(torch.as_tensor(y, dtype=torch.long).to(param.device))
    if not features:
        return torch.zeros(0, 0, device=param.device), torch.zeros(0, dtype=torch.long, device=param.device)
    return torch.cat(features), torch.cat(labels)
