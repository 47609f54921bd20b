"""The flywheel simulation: what comes back as labels, under optimistic and less optimistic assumptions."""

from __future__ import annotations

import numpy as np
import pytest

from llmlab.flywheel import Feedback, simulate_flywheel

INTENTS = [f"intent_{i}" for i in range(6)]


def clustered(n_per_intent: int, seed: int, spread: float = 0.9):
    """Unit vectors around one centre per intent: a stand-in for sentence embeddings that a linear head can separate."""
    generator = np.random.default_rng(seed)
    centres = np.random.default_rng(99).normal(size=(len(INTENTS), 16))
    labels = np.repeat(np.arange(len(INTENTS)), n_per_intent)
    vectors = centres[labels] + spread * generator.normal(size=(len(labels), 16))
    return (vectors / np.linalg.norm(vectors, axis=1, keepdims=True)).astype(np.float32), labels


@pytest.fixture(scope="module")
def data():
    pool, pool_labels = clustered(120, 0)
    validation, validation_labels = clustered(15, 1)
    test, test_labels = clustered(30, 2)
    return dict(pool_texts=[f"message {i}" for i in range(len(pool))], pool_vectors=pool, pool_labels=pool_labels,
                validation_vectors=validation, validation_labels=validation_labels, test_vectors=test, test_labels=test_labels,
                intents=INTENTS, months=3, messages_per_month=80, start_per_intent=2, max_wrong_answer_rate=0.1)


def test_optimistic_flywheel_labels_every_hand_off_and_wrong_answer(data):
    history = simulate_flywheel(**data)
    assert [month.month for month in history] == [0, 1, 2, 3]
    assert history[0].labels == 2 * len(INTENTS) and all(month.wrong_labels == 0 for month in history)
    assert all(later.labels > earlier.labels for earlier, later in zip(history, history[1:]))
    assert history[-1].accuracy >= history[0].accuracy


def test_less_feedback_means_fewer_labels_and_wrong_labels_are_counted(data):
    optimistic = simulate_flywheel(**data)
    silent = simulate_flywheel(**data, feedback=Feedback(wrong_answers_reported=0.0))
    assert silent[0] == optimistic[0]  # month 0 is the same model
    assert silent[-1].labels <= optimistic[-1].labels
    noisy = simulate_flywheel(**data, feedback=Feedback(label_error_rate=1.0))
    added = noisy[-1].labels - noisy[0].labels
    assert added > 0 and noisy[-1].wrong_labels == added  # every label a person gave is wrong, and counted


@pytest.mark.parametrize("bad", [dict(wrong_answers_reported=1.5), dict(label_error_rate=-0.1)])
def test_feedback_shares_are_checked(bad):
    with pytest.raises(ValueError, match="is a share in \\[0, 1\\]"):
        Feedback(**bad)


def test_running_out_of_traffic_is_an_error(data):
    with pytest.raises(ValueError, match="ran out of messages"):
        simulate_flywheel(**{**data, "months": 3, "messages_per_month": 400})
