"""Cosine similarity, nearest neighbours and a k-nearest-neighbour classifier over embedding vectors."""

from __future__ import annotations

import torch
from torch.nn import functional as F


def cosine_similarity(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """(n, d) and (m, d) -> (n, m): the cosine of the angle between every row of ``a`` and every row of ``b``."""
    if a.ndim != 2 or b.ndim != 2 or a.shape[1] != b.shape[1]:
        raise ValueError(f"expected (n, d) and (m, d) matrices, got {tuple(a.shape)} and {tuple(b.shape)}")
    return F.normalize(a, dim=1) @ F.normalize(b, dim=1).T


def nearest_neighbours(queries: torch.Tensor, index: torch.Tensor, k: int, chunk: int = 1024) -> tuple[torch.Tensor, torch.Tensor]:
    """(similarities, positions) of the ``k`` rows of ``index`` most similar to each query, best first."""
    if k > len(index):
        raise ValueError(f"k={k} is larger than the index ({len(index)} vectors)")
    scores, positions = [], []
    for start in range(0, len(queries), chunk):  # chunks keep the (queries, index) matrix small
        top = cosine_similarity(queries[start:start + chunk], index).topk(k, dim=1)
        scores.append(top.values)
        positions.append(top.indices)
    return torch.cat(scores), torch.cat(positions)


def knn_classify(queries: torch.Tensor, index: torch.Tensor, index_labels: torch.Tensor, k: int, n_classes: int) -> torch.Tensor:
    """Label of each query by a similarity-weighted vote of its ``k`` nearest labelled neighbours."""
    similarities, positions = nearest_neighbours(queries, index, k)
    votes = torch.zeros(len(queries), n_classes)
    votes.scatter_add_(1, index_labels[positions], similarities.clamp(min=0).float())
    return votes.argmax(dim=1)
