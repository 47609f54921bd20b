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
    assert support.pick_operating_point(rows, 0.0)["threshold"] == 0.85
    assert support.pick_operating_point(rows, 0.25)["threshold"] == 0.0
    with pytest.raises(ValueError, match="no threshold"):
        support.pick_operating_point(rows[:2], 0.1)
    with pytest.raises(ValueError, match="same non-zero length"):
        support.threshold_sweep([0.5, 0.6], [True])


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
