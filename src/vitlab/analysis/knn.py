"""k-nearest-neighbour classification of frozen features, as DINO evaluates its features (Caron et al. 2021,
"Emerging Properties in Self-Supervised Vision Transformers", eval_knn.py).

Each query is compared with every reference feature by cosine similarity; its `k` most similar references
vote for their labels. Weighted votes (DINO's): a neighbour at similarity s counts exp(s / T), so close
neighbours dominate as the temperature T shrinks. Unweighted votes: each neighbour counts 1 (a plain
majority vote, scikit-learn's `KNeighborsClassifier(weights="uniform", metric="cosine")`).

Ties: the class with the largest vote wins; among classes with equal votes the smallest class index wins
(`torch.argmax` returns the first maximum), which is also scikit-learn's rule (the smallest label of the
mode). Neighbours at exactly the same similarity as the k-th one are an arbitrary choice among them (as in
DINO); real features practically never tie. `k` larger than the number of references uses all of them.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor


def knn_predict(
    reference: Tensor,
    reference_labels: Tensor,
    queries: Tensor,
    num_classes: int,
    k: int = 20,
    temperature: float = 0.07,
    weighted: bool = True,
    chunk_size: int = 1024,
) -> Tensor:
    """Predicted class (N_q,) of each query; see the module docstring. Features need not be normalised (they
    are L2-normalised here); queries go through in chunks of `chunk_size` to bound the (chunk, N_ref) matrix."""
    if k < 1 or temperature <= 0:
        raise ValueError(f"k must be >= 1 and temperature > 0, got k={k}, temperature={temperature}")
    if len(reference) == 0:
        raise ValueError("k-NN needs at least one reference feature")
    reference = F.normalize(reference.float(), dim=1)
    labels = reference_labels.to(reference.device).long()
    k = min(k, len(reference))
    predictions = []
    for chunk in F.normalize(queries.float(), dim=1).to(reference.device).split(chunk_size):
        similarity, neighbours = (chunk @ reference.T).topk(k, dim=1)  # (b, k), most similar first
        weights = (similarity / temperature).exp() if weighted else torch.ones_like(similarity)
        votes = torch.zeros(len(chunk), num_classes, device=chunk.device, dtype=weights.dtype)
        votes.scatter_add_(1, labels[neighbours], weights)  # per class: the sum of its neighbours' weights
        predictions.append(votes.argmax(dim=1))
    return torch.cat(predictions) if predictions else torch.zeros(0, dtype=torch.long, device=reference.device)


def knn_accuracy(
    reference: Tensor,
    reference_labels: Tensor,
    queries: Tensor,
    query_labels: Tensor,
    num_classes: int,
    k: int = 20,
    temperature: float = 0.07,
    weighted: bool = True,
) -> float:
    """Fraction of queries whose k-NN prediction (`knn_predict`) is their label."""
    predicted = knn_predict(reference, reference_labels, queries, num_classes, k, temperature, weighted)
    return float((predicted == query_labels.to(predicted.device)).float().mean()) if len(predicted) else float("nan")
