"""How good a model is: language-model metrics (cross-entropy, perplexity) and classifier metrics.

Language models (Chapters 1 and 3): the mean cross-entropy in nats of the true next token, and
its exponential, the perplexity. Classifiers (Chapter 4): accuracy, macro-F1, the confusion matrix
and calibration, written out in NumPy so each formula is visible; ``tests/test_metrics.py`` checks
them against scikit-learn.
"""

from __future__ import annotations

import math

import numpy as np
import torch
from torch.nn import functional as F

# --- language models --------------------------------------------------------------------------


def token_cross_entropy(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Mean of -ln p(target) in nats over every position whose target is not -100.

    ``logits`` is (..., vocab) and ``targets`` (...) of token ids: a language model's
    (batch, n, V) with (batch, n), or a classifier's (batch, classes) with (batch,).
    The softmax runs in float32, because a softmax over a large vocabulary needs
    fp32's range and precision under fp16/bf16.
    """
    if logits.shape[:-1] != targets.shape:
        raise ValueError(f"logits {tuple(logits.shape)} need one more (vocabulary) "
                         f"dimension than targets {tuple(targets.shape)}")
    return F.cross_entropy(logits.reshape(-1, logits.shape[-1]).float(),
                           targets.reshape(-1), ignore_index=-100)


def cross_entropy(logits: torch.Tensor, targets: torch.Tensor) -> float:
    """:func:`token_cross_entropy` as a Python number."""
    return token_cross_entropy(logits, targets).item()


def perplexity(mean_cross_entropy: float) -> float:
    """exp(mean cross-entropy in nats).

    The number of equally likely choices the model is as unsure as.
    """
    return math.exp(mean_cross_entropy)


def perplexity_from_logits(logits: torch.Tensor, targets: torch.Tensor) -> float:
    """Perplexity of a model's predictions ``logits`` for the true next tokens ``targets``."""
    return perplexity(cross_entropy(logits, targets))


# --- classifiers --------------------------------------------------------------------------------


def _as_labels(values) -> np.ndarray:
    return np.asarray(values, dtype=np.int64).ravel()


def accuracy(true, predicted) -> float:
    """Share of examples whose predicted class is the true one."""
    true, predicted = _as_labels(true), _as_labels(predicted)
    if len(true) != len(predicted) or len(true) == 0:
        raise ValueError(f"expected two equally long, non-empty label lists, got {len(true)} and {len(predicted)}")
    return float((true == predicted).mean())


def confusion_matrix(true, predicted, n_classes: int) -> np.ndarray:
    """counts[i, j] = how many examples of class i were predicted as class j."""
    true, predicted = _as_labels(true), _as_labels(predicted)
    counts = np.zeros((n_classes, n_classes), dtype=np.int64)
    np.add.at(counts, (true, predicted), 1)
    return counts


def per_class_f1(true, predicted, n_classes: int) -> np.ndarray:
    """F1 = 2·precision·recall / (precision + recall) for each class (0 where a class is never predicted nor present)."""
    counts = confusion_matrix(true, predicted, n_classes)
    true_positives = np.diag(counts).astype(float)
    predicted_totals = counts.sum(axis=0)
    actual_totals = counts.sum(axis=1)
    # F1 written as 2·TP / (2·TP + FP + FN) avoids 0/0 in precision when a class is never predicted
    denominator = predicted_totals + actual_totals
    return np.divide(2 * true_positives, denominator, out=np.zeros(n_classes), where=denominator > 0)


def macro_f1(true, predicted, n_classes: int) -> float:
    """Mean F1 over the classes that occur in ``true`` or ``predicted``: every intent counts the same, however rare."""
    counts = confusion_matrix(true, predicted, n_classes)
    seen = (counts.sum(axis=0) + counts.sum(axis=1)) > 0
    return float(per_class_f1(true, predicted, n_classes)[seen].mean())


def expected_calibration_error(confidences, correct, n_bins: int = 10) -> float:
    """Σ_bins (share of examples in the bin) · |accuracy in the bin − mean confidence in the bin|.

    0 means that among answers given with 80 % confidence, 80 % are right, and so on for every bin.
    """
    confidences = np.asarray(confidences, dtype=float)
    correct = np.asarray(correct, dtype=float)
    edges = np.linspace(0.0, 1.0, n_bins + 1)
    bins = np.clip(np.digitize(confidences, edges[1:-1], right=True), 0, n_bins - 1)
    error = 0.0
    for b in range(n_bins):
        members = bins == b
        if members.any():
            error += members.mean() * abs(correct[members].mean() - confidences[members].mean())
    return float(error)


def reliability_table(confidences, correct, n_bins: int = 10) -> list[tuple[float, float, int]]:
    """(mean confidence, accuracy, count) per non-empty confidence bin, for a reliability diagram."""
    confidences = np.asarray(confidences, dtype=float)
    correct = np.asarray(correct, dtype=float)
    edges = np.linspace(0.0, 1.0, n_bins + 1)
    bins = np.clip(np.digitize(confidences, edges[1:-1], right=True), 0, n_bins - 1)
    return [(float(confidences[bins == b].mean()), float(correct[bins == b].mean()), int((bins == b).sum()))
            for b in range(n_bins) if (bins == b).any()]


def most_confused_pairs(true, predicted, names: list[str], top: int = 10) -> list[tuple[str, str, int]]:
    """The (true intent, predicted intent, count) pairs with the most mistakes, largest first."""
    counts = confusion_matrix(true, predicted, len(names))
    np.fill_diagonal(counts, 0)
    flat = np.argsort(-counts, axis=None, kind="stable")[:top]
    pairs = [(names[i], names[j], int(counts[i, j])) for i, j in zip(*np.unravel_index(flat, counts.shape))]
    return [pair for pair in pairs if pair[2] > 0]
