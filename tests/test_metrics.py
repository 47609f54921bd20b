"""How good a model is: cross-entropy and perplexity (checked by hand), classifier metrics (checked against scikit-learn)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from llmlab import metrics


def test_perplexity_definitions():
    uniform = torch.zeros(7, 65)
    assert metrics.perplexity_from_logits(uniform, torch.arange(7)) == pytest.approx(65.0, rel=1e-5)
    assert metrics.perplexity(math.log(4.0)) == pytest.approx(4.0)
    with pytest.raises(ValueError, match="dimension"):
        metrics.cross_entropy(torch.zeros(3, 5), torch.zeros(4, dtype=torch.long))


def test_token_cross_entropy_ignores_padding_and_runs_in_float32():
    logits = torch.randn(2, 5, 7, dtype=torch.bfloat16)
    targets = torch.randint(0, 7, (2, 5))
    targets[0, :2] = -100
    kept = targets != -100
    expected = torch.nn.functional.cross_entropy(logits.float()[kept], targets[kept])
    value = metrics.token_cross_entropy(logits, targets)
    assert value.dtype == torch.float32 and torch.allclose(value, expected)
    labels = torch.tensor([0, 2])  # a classifier's (batch, classes) logits work the same way
    assert torch.allclose(metrics.token_cross_entropy(logits[:, 0].float(), labels),
                          torch.nn.functional.cross_entropy(logits[:, 0].float(), labels))


def test_metrics_match_scikit_learn():
    from sklearn import metrics as sk

    generator = np.random.default_rng(0)
    true = generator.integers(0, 6, 300)
    predicted = np.where(generator.random(300) < 0.6, true, generator.integers(0, 6, 300))
    predicted[predicted == 5] = 4  # class 5 is never predicted: its F1 is 0, not undefined
    assert metrics.accuracy(true, predicted) == pytest.approx(sk.accuracy_score(true, predicted))
    assert metrics.macro_f1(true, predicted, 6) == pytest.approx(sk.f1_score(true, predicted, average="macro"))
    np.testing.assert_array_equal(metrics.confusion_matrix(true, predicted, 6), sk.confusion_matrix(true, predicted, labels=range(6)))
    pairs = metrics.most_confused_pairs(true, predicted, list("abcdef"), top=3)
    assert pairs[0][:2] == ("f", "e") and pairs[0][2] == ((true == 5) & (predicted == 4)).sum()


def test_calibration_error():
    assert metrics.expected_calibration_error([0.9] * 10, [1] * 9 + [0]) == pytest.approx(0.0)
    assert metrics.expected_calibration_error([0.9] * 10, [1] * 5 + [0] * 5) == pytest.approx(0.4)
    table = metrics.reliability_table([0.15, 0.95, 0.95], [0, 1, 0])
    assert table == [(pytest.approx(0.15), 0.0, 1), (pytest.approx(0.95), 0.5, 2)]
