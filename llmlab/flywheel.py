"""The data flywheel of Chapter 6, simulated month by month: hand-offs and complaints become labels.

Each month the assistant (a frozen-recipe intent classifier, ``llmlab.intents``) meets a month
of new messages. Those below its confidence threshold go to a person, who routes them and so
labels them. Those it answers wrongly come back only if the customer notices and contacts the
bank again; and a person's label is itself sometimes wrong. ``Feedback`` names those two
assumptions, so the optimistic story (every wrong answer reported, every label right) and a
less optimistic one can be run side by side. The classifier is retrained on all labels so far,
its threshold re-chosen on a validation set, and each month's model is measured on a test set.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from llmlab.assistant import pick_operating_point, threshold_sweep
from llmlab.intents import sample_per_intent, train_intent_classifier


@dataclass(frozen=True)
class Feedback:
    """What comes back from a month of traffic as labels.

    ``wrong_answers_reported``: the share of wrong automatic answers that customers report
    (a repeat contact a person resolves); 1.0 is the optimistic assumption that all are.
    ``label_error_rate``: the share of labels a person gets wrong (given a random other intent).
    Hand-offs are always labelled: a person had to route them anyway.
    """

    wrong_answers_reported: float = 1.0
    label_error_rate: float = 0.0

    def __post_init__(self):
        for name in ("wrong_answers_reported", "label_error_rate"):
            value = getattr(self, name)
            if not 0.0 <= value <= 1.0:
                raise ValueError(f"Feedback.{name} is a share in [0, 1], got {value!r}")


@dataclass
class Month:
    month: int
    labels: int
    accuracy: float
    threshold: float
    automation_rate: float
    wrong_answer_rate: float
    wrong_labels: int


def _confidence_and_prediction(classifier, vectors) -> tuple[np.ndarray, np.ndarray]:
    probabilities = classifier.probabilities_from_embeddings(vectors)
    return probabilities.max(axis=1), probabilities.argmax(axis=1)


def simulate_flywheel(pool_texts: list[str], pool_vectors, pool_labels, validation_vectors, validation_labels, test_vectors, test_labels,
                      intents: list[str], months: int, messages_per_month: int, start_per_intent: int,
                      max_wrong_answer_rate: float, feedback: Feedback = Feedback(), seed: int = 0,
                      thresholds=None) -> list[Month]:
    """Run the flywheel for ``months`` months; one :class:`Month` per month, month 0 included.

    The pool (texts, their embeddings and true intents) is the stream of future traffic; labels
    come only from it, through ``feedback``. ``thresholds`` default to 0.00, 0.01, …, 1.00.
    """
    pool_labels = np.asarray(pool_labels)
    if months < 0 or messages_per_month < 1:
        raise ValueError(f"need months >= 0 and messages_per_month >= 1, got {months} and {messages_per_month}")
    thresholds = np.round(np.linspace(0, 1, 101), 2) if thresholds is None else thresholds
    generator = np.random.default_rng(seed)
    labelled = np.array(sample_per_intent(pool_labels, start_per_intent, seed=seed + 3))
    given_labels = pool_labels[labelled].copy()  # the labels the model trains on (the start set is curated: all right)
    arrivals = generator.permutation(np.setdiff1d(np.arange(len(pool_labels)), labelled))
    history = []
    for month in range(months + 1):
        classifier = train_intent_classifier([pool_texts[i] for i in labelled], given_labels, intents, recipe="frozen",
                                             embeddings=pool_vectors[labelled], device="cpu")
        confidence, predicted = _confidence_and_prediction(classifier, validation_vectors)
        threshold = pick_operating_point(threshold_sweep(confidence, predicted == np.asarray(validation_labels), thresholds),
                                         max_wrong_answer_rate, messages=len(validation_labels))["threshold"]
        confidence, predicted = _confidence_and_prediction(classifier, test_vectors)
        correct, answered = predicted == np.asarray(test_labels), confidence >= threshold
        history.append(Month(month, len(labelled), float(correct.mean()), float(threshold), float(answered.mean()),
                             float((answered & ~correct).mean()), int((given_labels != pool_labels[labelled]).sum())))
        if month == months:
            break
        traffic, arrivals = arrivals[:messages_per_month], arrivals[messages_per_month:]
        if len(traffic) == 0:
            raise ValueError(f"the pool ran out of messages in month {month + 1}: give a larger pool or fewer months")
        confidence, predicted = _confidence_and_prediction(classifier, pool_vectors[traffic])
        handed_off = confidence < threshold
        wrong = ~handed_off & (predicted != pool_labels[traffic])
        reported = wrong & (generator.random(len(traffic)) < feedback.wrong_answers_reported)
        comes_back = traffic[handed_off | reported]
        new_labels = pool_labels[comes_back].copy()
        mistaken = generator.random(len(comes_back)) < feedback.label_error_rate
        # a mistaken label is one of the other intents, drawn at random
        new_labels[mistaken] = (new_labels[mistaken] + generator.integers(1, len(intents), mistaken.sum())) % len(intents)
        labelled = np.concatenate([labelled, comes_back])
        given_labels = np.concatenate([given_labels, new_labels])
    return history
