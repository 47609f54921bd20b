"""The assistant's parts: the course's answers, the threshold sweep, hand-offs, evidence retrieval."""

from __future__ import annotations

import csv
import math
import re

import numpy as np
import pytest

from llmlab import assistant as support
from llmlab.data import DataFileError, banking77_intents, data_dir


class FakeIntentClassifier:
    """A test double with the interface of llmlab.intents.IntentClassifier: fixed answers per keyword."""

    intents = ["card_arrival", "lost_or_stolen_card"]

    def predict(self, texts):
        return [("lost_or_stolen_card", 0.95) if "stolen" in text else ("card_arrival", 0.40) for text in texts]


def word_vectors(texts):
    """A tiny bag-of-words embedding over a fixed vocabulary, unit length: enough to test retrieval."""
    vocabulary = ["card", "arrived", "stolen", "lost", "fee", "transfer"]
    vectors = np.array([[text.lower().count(word) for word in vocabulary] for text in texts], dtype=np.float32) + 1e-3
    return vectors / np.linalg.norm(vectors, axis=1, keepdims=True)


def test_course_answers_cover_every_intent_once_and_promise_no_numbers():
    intents = banking77_intents()
    answers = support.load_answers(intents=intents)
    assert set(answers) == set(intents) and len(answers) == 77
    with open(data_dir() / support.ANSWERS_FILE, newline="", encoding="utf-8") as handle:
        rows = list(csv.reader(handle))
    assert rows[0] == ["intent", "answer"] and len(rows) == 78
    for intent, answer in answers.items():
        assert 20 <= len(answer) <= 300, intent
        # a fictional bank cannot know real fees or delivery times: no answer quotes a number
        assert not re.search(r"\d", answer), f"{intent}: {answer}"


def test_missing_answers_file_is_a_one_line_error(tmp_path):
    with pytest.raises(DataFileError, match="missing data file") as error:
        support.load_answers(root=tmp_path)
    assert "\n" not in str(error.value)
    (tmp_path / "banking77").mkdir()
    partial = tmp_path / "banking77" / "answers.csv"
    partial.write_text("intent,answer\ncard_arrival,On its way.\n")
    with pytest.raises(DataFileError, match="corrupt data file"):
        support.load_answers(root=tmp_path)  # the published file is checked by its sha256
    with pytest.raises(DataFileError, match="no answer for 76 intents"):
        support.read_answers(partial, intents=banking77_intents())


def test_threshold_sweep_counts_by_hand():
    confidences = [0.9, 0.8, 0.6, 0.3]
    correct = [True, False, True, True]
    rows = support.threshold_sweep(confidences, correct, thresholds=[0.0, 0.5, 0.7, 0.85, 0.95])
    assert [row["automation_rate"] for row in rows] == [1.0, 0.75, 0.5, 0.25, 0.0]
    assert [row["wrong_answer_rate"] for row in rows] == [0.25, 0.25, 0.25, 0.0, 0.0]
    assert rows[1]["answered_accuracy"] == pytest.approx(2 / 3) and math.isnan(rows[-1]["answered_accuracy"])
    # a confidence equal to the threshold is answered
    assert support.threshold_sweep([0.5], [True], [0.5])[0]["automation_rate"] == 1.0
    # z = 0 compares the measured rate itself with the cap (the point-estimate rule)
    assert support.pick_operating_point(rows, 0.1, messages=4, z=0)["threshold"] == 0.85
    assert support.pick_operating_point(rows, 0.25, messages=4, z=0)["threshold"] == 0.0
    with pytest.raises(ValueError, match="no threshold"):
        support.pick_operating_point(rows[:2], 0.1, messages=4, z=0)
    with pytest.raises(ValueError, match="same non-zero length"):
        support.threshold_sweep([0.5, 0.6], [True])


def validation_messages_with_wrong_answers_at(wrong_confidences, right=900, total=1000):
    """``right`` right answers at confidence 0.95, wrong ones at the given confidences, the rest right at 0.5."""
    confidences = [0.95] * right + list(wrong_confidences) + [0.5] * (total - right - len(wrong_confidences))
    correct = [True] * right + [False] * len(wrong_confidences) + [True] * (total - right - len(wrong_confidences))
    return np.array(confidences), np.array(correct)


def test_operating_point_keeps_the_upper_bound_under_the_cap_where_the_point_estimate_does_not():
    # 1,000 messages, 10 wrong answers at confidence 0.85 and 9 more at 0.65. At threshold 0.5 every message
    # is answered and 19 (1.9 %) are wrong: under a 2 % cap, so the point-estimate rule takes it, but the upper
    # end of its 95 % Wilson interval is 2.95 %. At 0.7, 10 wrong answers (1.0 %) have an upper end of 1.83 %.
    confidences, correct = validation_messages_with_wrong_answers_at([0.85] * 10 + [0.65] * 9)
    rows = support.threshold_sweep(confidences, correct, thresholds=[0.5, 0.7, 0.9])
    assert support.pick_operating_point(rows, 0.02, messages=1000, z=0)["threshold"] == 0.5  # the old rule
    chosen = support.pick_operating_point(rows, 0.02, messages=1000)
    assert chosen["threshold"] == 0.7 and chosen["wrong_answers"] == 10
    assert chosen["wrong_answer_upper_bound"] == pytest.approx(0.018310, abs=1e-6)
    assert chosen["automation_rate"] == pytest.approx(0.91)
    # 11 wrong answers (upper end 1.96 %) are still allowed on 1,000 messages, 12 (2.09 %) are not
    confidences, correct = validation_messages_with_wrong_answers_at([0.85] * 11 + [0.65])
    rows = support.threshold_sweep(confidences, correct, thresholds=[0.5, 0.7, 0.9])
    assert support.pick_operating_point(rows, 0.02, messages=1000)["threshold"] == 0.7
    confidences, correct = validation_messages_with_wrong_answers_at([0.85] * 12)
    rows = support.threshold_sweep(confidences, correct, thresholds=[0.5, 0.7, 0.9])
    assert support.pick_operating_point(rows, 0.02, messages=1000)["threshold"] == 0.9


def test_operating_point_needs_the_number_of_messages_and_enough_of_them():
    confidences, correct = validation_messages_with_wrong_answers_at([0.85] * 10)
    rows = support.threshold_sweep(confidences, correct, thresholds=[0.5, 0.9])
    with pytest.raises(ValueError, match="not a count of 770 messages"):
        support.pick_operating_point(rows, 0.02, messages=770)
    with pytest.raises(ValueError, match="messages must be"):
        support.pick_operating_point(rows, 0.02, messages=0)
    # on 100 messages even no wrong answer has an upper end of 3.7 %: no threshold can promise 2 %
    confidences, correct = validation_messages_with_wrong_answers_at([], right=90, total=100)
    rows = support.threshold_sweep(confidences, correct, thresholds=[0.5, 0.9, 1.0])
    with pytest.raises(ValueError, match="even 0 wrong answers has a higher upper bound; use more validation"):
        support.pick_operating_point(rows, 0.02, messages=100)


def test_the_upper_bound_rule_keeps_the_true_rate_under_the_cap_in_most_validation_draws():
    # A known population: confidence uniform on [0, 1], wrong with probability 0.3 (1 - c), so the true
    # wrong-answer rate at threshold t is 0.15 (1 - t)^2, which is 2 % at t = 0.635. Draw 300 validation sets
    # of 1,000 messages; the upper-bound rule should choose a threshold whose true rate exceeds the cap in
    # about 2.5 % of draws (the upper end of a 95 % interval), the point-estimate rule in about half of them.
    generator = np.random.default_rng(0)
    thresholds = np.round(np.linspace(0, 1, 101), 2)
    def true_rate(threshold):
        return 0.15 * (1 - threshold) ** 2
    over_the_cap = {"upper bound": 0, "point estimate": 0}
    draws = 300
    for _ in range(draws):
        confidences = generator.random(1000)
        correct = generator.random(1000) >= 0.3 * (1 - confidences)
        rows = support.threshold_sweep(confidences, correct, thresholds)
        for rule, z in (("upper bound", 1.96), ("point estimate", 0.0)):
            chosen = support.pick_operating_point(rows, 0.02, messages=1000, z=z)
            over_the_cap[rule] += true_rate(chosen["threshold"]) > 0.02
    assert over_the_cap["upper bound"] <= 0.05 * draws, over_the_cap
    assert over_the_cap["point estimate"] >= 0.3 * draws, over_the_cap


def test_assistant_answers_above_the_threshold_and_hands_off_below():
    answers = {"card_arrival": "It is on its way.", "lost_or_stolen_card": "Freeze it now."}
    known = ["my card has not arrived", "card still not arrived", "my card was stolen", "lost my card"]
    evidence = support.NearestQuestions(known, ["card_arrival", "card_arrival", "lost_or_stolen_card", "lost_or_stolen_card"], word_vectors)
    bot = support.SupportAssistant(FakeIntentClassifier(), answers, threshold=0.5, evidence=evidence, evidence_count=2)
    stolen, unsure = bot.reply_many(["someone stolen my card", "where is my card, not arrived"])
    assert (stolen.intent, stolen.answer, stolen.handoff) == ("lost_or_stolen_card", "Freeze it now.", False)
    assert (unsure.intent, unsure.answer, unsure.handoff) == ("card_arrival", None, True)
    assert [item.text for item in stolen.evidence] == ["my card was stolen", "lost my card"]
    assert unsure.evidence[0].intent == "card_arrival" and unsure.evidence[0].similarity >= unsure.evidence[1].similarity
    with pytest.raises(ValueError, match="no answer for 1"):
        support.SupportAssistant(FakeIntentClassifier(), {"card_arrival": "x"}, threshold=0.5)
    with pytest.raises(ValueError, match="threshold"):
        support.SupportAssistant(FakeIntentClassifier(), answers, threshold=1.5)


# --- embedding each message once -------------------------------------------------------------


class CountingEmbedder:
    """An embedding function that counts the texts it embeds."""

    def __init__(self, vectors):
        self.vectors, self.texts_embedded = vectors, 0

    def __call__(self, texts):
        self.texts_embedded += len(texts)
        return self.vectors(texts)


class FrozenWordClassifier:
    """A test double of a frozen-recipe IntentClassifier: a fixed linear head over word_vectors."""

    intents = ["card_arrival", "lost_or_stolen_card"]
    head = np.array([[2.0, 1.5, -1.0, -1.0, 0.0, 0.0], [-1.0, -1.0, 3.0, 2.5, 0.0, 0.0]], dtype=np.float32).T

    def __init__(self, encoder=word_vectors):
        self.encoder = encoder

    def probabilities_from_embeddings(self, embeddings):
        logits = np.asarray(embeddings, dtype=np.float64) @ self.head
        return np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True)

    def predict_proba(self, texts):
        return self.probabilities_from_embeddings(self.encoder(texts))

    def predict(self, texts):
        return support.predictions_from_probabilities(self.predict_proba(texts), self.intents)


KNOWN_QUESTIONS = ["my card has not arrived", "card still not arrived", "my card was stolen", "lost my card"]
KNOWN_INTENTS = ["card_arrival", "card_arrival", "lost_or_stolen_card", "lost_or_stolen_card"]
ANSWERS = {"card_arrival": "It is on its way.", "lost_or_stolen_card": "Freeze it now."}
MESSAGES = ["someone stolen my card", "where is my card, not arrived", "a fee for a transfer", "lost card, lost"]


def test_embedding_once_gives_the_same_replies_and_embeds_each_message_once():
    embedder = CountingEmbedder(word_vectors)
    evidence = support.NearestQuestions(KNOWN_QUESTIONS, KNOWN_INTENTS, embedder)
    classifier = FrozenWordClassifier(encoder=embedder)  # the same encoder, counted once for both
    twice = support.SupportAssistant(classifier, ANSWERS, threshold=0.6, evidence=evidence)
    once = support.SupportAssistant(classifier, ANSWERS, threshold=0.6, evidence=evidence, embed_once=True)
    assert once.embed_once and not twice.embed_once
    embedder.texts_embedded = 0
    expected = twice.reply_many(MESSAGES)
    assert embedder.texts_embedded == 2 * len(MESSAGES)
    embedder.texts_embedded = 0
    replies = once.reply_many(MESSAGES)
    assert embedder.texts_embedded == len(MESSAGES)  # the classifier read the evidence's vectors
    assert replies == expected
    assert {reply.handoff for reply in replies} == {True, False} and all(len(r.evidence) == 3 for r in replies)


def test_embedding_once_is_refused_in_one_line_where_classifier_and_evidence_embed_differently():
    # The evidence embeds with the vocabulary reversed: its search finds the same neighbours (a cosine
    # is blind to the order of the coordinates), but the classifier would read other vectors.
    evidence = support.NearestQuestions(KNOWN_QUESTIONS, KNOWN_INTENTS, lambda texts: word_vectors(texts)[:, ::-1].copy())
    assert support.shared_embedding_problem(FrozenWordClassifier(), evidence) is not None
    with pytest.raises(ValueError, match="embed messages differently") as error:
        support.SupportAssistant(FrozenWordClassifier(), ANSWERS, threshold=0.6, evidence=evidence, embed_once=True)
    assert "\n" not in str(error.value)
    shared = support.NearestQuestions(KNOWN_QUESTIONS, KNOWN_INTENTS, word_vectors)
    assert support.shared_embedding_problem(FrozenWordClassifier(), shared) is None
    # a classifier that cannot score vectors, vectors of another width, no evidence at all
    with pytest.raises(ValueError, match="lacks intents or one of predict, predict_proba, probabilities_from_embeddings"):
        support.SupportAssistant(FakeIntentClassifier(), ANSWERS, threshold=0.6, evidence=shared, embed_once=True)
    wide = support.NearestQuestions(KNOWN_QUESTIONS, KNOWN_INTENTS, lambda texts: np.tile(word_vectors(texts), 2))
    assert "cannot read the evidence's vectors" in support.shared_embedding_problem(FrozenWordClassifier(), wide)
    with pytest.raises(ValueError, match="no evidence search"):
        support.SupportAssistant(FrozenWordClassifier(), ANSWERS, threshold=0.6, embed_once=True)


def test_a_trained_encoder_cannot_share_the_evidence_vectors():
    class TrainedEncoderClassifier(FrozenWordClassifier):
        def probabilities_from_embeddings(self, embeddings):  # what IntentClassifier does for lora, finetune
            raise ValueError("probabilities_from_embeddings needs a classifier trained with recipe='frozen'\nmore")

    evidence = support.NearestQuestions(KNOWN_QUESTIONS, KNOWN_INTENTS, word_vectors)
    problem = support.shared_embedding_problem(TrainedEncoderClassifier(), evidence)
    assert problem.endswith("(ValueError: probabilities_from_embeddings needs a classifier trained with recipe='frozen')")
