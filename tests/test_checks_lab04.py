"""Lab 4's self-checks pass the reference code and name each classic mistake (04.1 LoRA, 04.2 macro-F1, 04.3 sampler)."""

from __future__ import annotations

import numpy as np
import pytest

from llmlab import metrics
from llmlab.checks import lab04
from llmlab.intents import sample_per_intent


def lora_forward(x, weight, bias, lora_A, lora_B, alpha, r):
    return x @ weight.T + bias + (alpha / r) * (x @ lora_A.T @ lora_B.T)


def expect(result, phrase: str | None) -> None:
    """``phrase`` None: the check passes; otherwise it fails with a message that contains ``phrase``."""
    assert bool(result) is (phrase is None), result
    assert phrase is None or phrase in result.message, result


# --- 04.1: the LoRA forward pass ---------------------------------------------------------------------------


def lora_with(scale, frozen=True, bias=True):
    """frozen layer (x Wᵀ + b, or without b) + scale(alpha, r) · x Aᵀ Bᵀ."""
    def forward(x, W, b, A, B, alpha, r):
        base = x @ W.T + (b if bias else 0) if frozen else 0
        return base + scale(alpha, r) * (x @ A.T @ B.T)
    return forward


@pytest.mark.parametrize("forward, phrase", [
    pytest.param(lora_forward, None, id="reference"),
    pytest.param(lambda *args: lora_forward(*args).numpy(), "the output should be a torch.Tensor", id="numpy"),
    pytest.param(lambda x, W, b, A, B, alpha, r: (x @ W.T + b)[:, :1] + 0 * (x @ A.T @ B.T)[:, :1], "x (n, in) times Wᵀ",
                 id="wrong-shape"),
    pytest.param(lora_with(lambda alpha, r: 0.0), "add the low-rank update", id="frozen-layer-only"),
    pytest.param(lora_with(lambda alpha, r: 1.0), "the update is missing its scale", id="no-scale"),
    pytest.param(lora_with(lambda alpha, r: r / alpha), "the scale is upside down", id="r-over-alpha"),
    pytest.param(lora_with(lambda alpha, r: alpha / r, frozen=False), "the output is the update alone", id="update-only"),
    pytest.param(lora_with(lambda alpha, r: alpha / r, bias=False), "the frozen layer's bias is missing", id="no-bias"),
    pytest.param(lora_with(lambda alpha, r: alpha), "the output differs from x Wᵀ + b + (alpha/r)·x Aᵀ Bᵀ by up to",
                 id="scaled-by-alpha"),
])
def test_lora_check(forward, phrase):
    expect(lab04.check_lora_forward(forward), phrase)


# --- 04.2: macro-F1 -------------------------------------------------------------------------------------------


def f1_from_scratch(true, predicted, n_classes):
    scores = []
    for c in range(n_classes):
        tp = np.sum((true == c) & (predicted == c))
        fp = np.sum((true != c) & (predicted == c))
        fn = np.sum((true == c) & (predicted != c))
        if tp + fp + fn:
            scores.append(2 * tp / (2 * tp + fp + fn))
    return float(np.mean(scores))


def precision_recall_nan(true, predicted, n_classes):
    with np.errstate(invalid="ignore", divide="ignore"):
        counts = metrics.confusion_matrix(true, predicted, n_classes)
        precision = np.diag(counts) / counts.sum(0)
        recall = np.diag(counts) / counts.sum(1)
        return float(np.mean(2 * precision * recall / (precision + recall)))


def weighted_f1(true, predicted, n_classes):
    support = np.bincount(true, minlength=n_classes)
    return float((metrics.per_class_f1(true, predicted, n_classes) * support).sum() / support.sum())


def f1_of_macro_precision_and_recall(true, predicted, n_classes):
    counts = metrics.confusion_matrix(true, predicted, n_classes)
    present = (counts.sum(0) + counts.sum(1)) > 0
    precision = np.mean(np.diag(counts)[present] / np.maximum(counts.sum(0)[present], 1))
    recall = np.mean(np.diag(counts)[present] / np.maximum(counts.sum(1)[present], 1))
    return float(2 * precision * recall / (precision + recall))


@pytest.mark.parametrize("macro_f1, phrase", [
    pytest.param(metrics.macro_f1, None, id="reference"),
    pytest.param(f1_from_scratch, None, id="from-scratch"),
    pytest.param(lambda t, p, n: f"{metrics.macro_f1(t, p, n):.3f}", "return one number (a float), got str", id="string"),
    pytest.param(lambda t, p, n: metrics.per_class_f1(t, p, n), "return one number (a float), got ndarray", id="per-class"),
    pytest.param(precision_recall_nan, "got nan", id="nan-for-unpredicted-class"),
    pytest.param(lambda t, p, n: metrics.accuracy(t, p), "this is the accuracy", id="accuracy"),
    pytest.param(weighted_f1, "support-weighted F1", id="weighted"),
    pytest.param(lambda t, p, n: float(metrics.per_class_f1(t, p, n).mean()), "including classes absent from both lists",
                 id="all-classes"),
    pytest.param(lambda t, p, n: float(metrics.per_class_f1(t, p, n)[np.bincount(t, minlength=n) > 0].mean()),
                 "only over classes that occur in `true`", id="true-classes-only"),
    pytest.param(f1_of_macro_precision_and_recall, "on a random case, you returned", id="f1-of-averages"),
])
def test_macro_f1_check(macro_f1, phrase):
    expect(lab04.check_macro_f1(macro_f1), phrase)


# --- 04.3: the stratified sampler -------------------------------------------------------------------------------


def shuffled(members, generator, per_intent):
    return generator.permutation(members)[:per_intent]


def stratified(pick, flatten: bool = True):
    """Draws ``pick(members, generator, per_intent)`` from each intent's indices; with ``flatten``, one sorted list."""
    def sample(labels, per_intent, seed):
        generator = np.random.default_rng(seed)
        chosen = [pick(np.flatnonzero(labels == intent), generator, per_intent) for intent in np.unique(labels)]
        return sorted(int(i) for part in chosen for i in part) if flatten else chosen
    return sample


def overall(labels, per_intent, seed):
    total = sum(min(per_intent, n) for n in np.bincount(labels))
    return sorted(np.random.default_rng(seed).permutation(len(labels))[:total].tolist())


def labels_instead_of_indices(labels, per_intent, seed):
    return sorted(int(labels[i]) for i in sample_per_intent(labels, per_intent, seed))


@pytest.mark.parametrize("sample, phrase", [
    pytest.param(sample_per_intent, None, id="reference"),
    pytest.param(stratified(shuffled), None, id="reference-rewritten"),
    pytest.param(lambda labels, per_intent, seed: set(sample_per_intent(labels, per_intent, seed)),
                 "return a list of indices, got set", id="set"),
    pytest.param(stratified(shuffled, flatten=False), "return one flat list of indices", id="one-array-per-intent"),
    pytest.param(stratified(lambda m, g, k: np.pad(g.permutation(m)[:k], (0, k - min(k, len(m))), constant_values=-1)),
                 "some indices are outside 0 … len(labels) - 1", id="padded-with-minus-one"),
    pytest.param(labels_instead_of_indices, "these are the intents of the chosen examples", id="labels-not-indices"),
    pytest.param(stratified(lambda m, g, k: g.choice(m, k, replace=True)), "an index appears twice", id="with-replacement"),
    pytest.param(overall, "right total but wrong mix per intent", id="not-stratified"),
    pytest.param(stratified(lambda m, g, k: shuffled(m, g, k) if len(m) >= k else []), "an intent with fewer examples gives all it has",
                 id="skips-small-intents"),
    pytest.param(lambda labels, per_intent, seed: sample_per_intent(labels, per_intent, seed)[::-1], "increasing order",
                 id="unsorted"),
    pytest.param(lambda labels, per_intent, seed: sample_per_intent(labels, per_intent, np.random.randint(1 << 30)),
                 "the same seed gave a different sample", id="seed-ignored-random"),
    pytest.param(stratified(lambda m, g, k: m[:k]), "you take the first examples of each intent", id="first-examples"),
    pytest.param(lambda labels, per_intent, seed: sample_per_intent(labels, per_intent, 42), "seeds 0 and 1 gave the same sample",
                 id="seed-hard-coded"),
])
def test_sampler_check(sample, phrase):
    expect(lab04.check_sample_per_intent(sample), phrase)
