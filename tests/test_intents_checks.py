"""Lab 4's self-checks pass correct code and name the typical mistakes."""

from __future__ import annotations

import numpy as np

from llmlab import checks
from llmlab import intents as routing
from llmlab import metrics_classification as metrics


def lora_forward(x, weight, bias, lora_A, lora_B, alpha, r):
    return x @ weight.T + bias + (alpha / r) * (x @ lora_A.T @ lora_B.T)


def test_lora_forward_check():
    assert checks.check_lora_forward(lora_forward)
    mistakes = {
        "add the low-rank update": lambda x, W, b, A, B, alpha, r: x @ W.T + b,
        "missing its scale": lambda x, W, b, A, B, alpha, r: x @ W.T + b + x @ A.T @ B.T,
        "upside down": lambda x, W, b, A, B, alpha, r: x @ W.T + b + (r / alpha) * (x @ A.T @ B.T),
        "bias included": lambda x, W, b, A, B, alpha, r: x @ W.T + (alpha / r) * (x @ A.T @ B.T),
        "has shape": lambda x, W, b, A, B, alpha, r: (x @ W.T + b)[:, :1],
        "not implemented yet": lambda *args: (_ for _ in ()).throw(NotImplementedError()),
        "raised RuntimeError": lambda x, W, b, A, B, alpha, r: x @ W + b,
    }
    for message, wrong in mistakes.items():
        result = checks.check_lora_forward(wrong)
        assert not result and message in result.message, (message, result)


def test_macro_f1_check():
    assert checks.check_macro_f1(metrics.macro_f1)

    def from_scratch(true, predicted, n_classes):
        scores = []
        for c in range(n_classes):
            tp = np.sum((true == c) & (predicted == c))
            fp = np.sum((true != c) & (predicted == c))
            fn = np.sum((true == c) & (predicted != c))
            if tp + fp + fn:
                scores.append(2 * tp / (2 * tp + fp + fn))
        return float(np.mean(scores))

    assert checks.check_macro_f1(from_scratch)

    def weighted(true, predicted, n_classes):
        support = np.bincount(true, minlength=n_classes)
        return float((metrics.per_class_f1(true, predicted, n_classes) * support).sum() / support.sum())

    def precision_recall_nan(true, predicted, n_classes):
        with np.errstate(invalid="ignore", divide="ignore"):
            counts = metrics.confusion_matrix(true, predicted, n_classes)
            precision = np.diag(counts) / counts.sum(0)
            recall = np.diag(counts) / counts.sum(1)
            return float(np.mean(2 * precision * recall / (precision + recall)))

    mistakes = {
        "this is the accuracy": lambda t, p, n: metrics.accuracy(t, p),
        "support-weighted": weighted,
        "including classes absent": lambda t, p, n: float(metrics.per_class_f1(t, p, n).mean()),
        "only predicted": lambda t, p, n: float(metrics.per_class_f1(t, p, n)[np.bincount(t, minlength=n) > 0].mean()),
        "got nan": precision_recall_nan,
        "return one number": lambda t, p, n: "0.5",
    }
    for message, wrong in mistakes.items():
        result = checks.check_macro_f1(wrong)
        assert not result and message in result.message, (message, result)


def test_sample_per_intent_check():
    assert checks.check_sample_per_intent(routing.sample_per_intent)

    def first_ones(labels, per_intent, seed):
        return sorted(i for c in np.unique(labels) for i in np.flatnonzero(labels == c)[:per_intent])

    def unsorted(labels, per_intent, seed):
        return routing.sample_per_intent(labels, per_intent, seed)[::-1]

    def overall(labels, per_intent, seed):
        total = sum(min(per_intent, n) for n in np.bincount(labels))
        return sorted(np.random.default_rng(seed).permutation(len(labels))[:total].tolist())

    def unseeded(labels, per_intent, seed):
        return routing.sample_per_intent(labels, per_intent, seed=np.random.randint(1 << 30))

    def with_repeats(labels, per_intent, seed):
        chosen = routing.sample_per_intent(labels, per_intent, seed)
        return sorted(chosen[:-1] + chosen[:1])

    def labels_not_indices(labels, per_intent, seed):
        return sorted(int(labels[i]) + 1000 for i in routing.sample_per_intent(labels, per_intent, seed))

    def too_many(labels, per_intent, seed):
        generator = np.random.default_rng(seed)
        return sorted(i for c in np.unique(labels) for i in generator.choice(np.flatnonzero(labels == c), per_intent, replace=True))

    mistakes = {
        "take the first examples": first_ones,
        "increasing order": unsorted,
        "sample within each intent": overall,
        "same seed gave a different sample": unseeded,
        "appears twice": with_repeats,
        "outside 0": labels_not_indices,
        "appears twice ": None,
    }
    mistakes.pop("appears twice ")
    for message, wrong in mistakes.items():
        result = checks.check_sample_per_intent(wrong)
        assert not result and message in result.message, (message, result)
    result = checks.check_sample_per_intent(too_many)
    assert not result and "appears twice" in result.message
