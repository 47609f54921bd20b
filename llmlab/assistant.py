"""A customer-support assistant assembled from parts: classifier + answers + evidence + threshold.

    assistant = SupportAssistant(classifier, load_answers(), threshold=0.6, evidence=NearestQuestions(...))
    assistant.reply("my card still hasn't arrived")
    # Reply(intent='card_arrival', confidence=0.94, answer='Sorry your card…', handoff=False, evidence=[…])

The classifier is anything with ``predict(texts) -> [(intent, confidence)]`` (Lab 4's
``IntentClassifier``, or a test double). Below ``threshold`` the assistant does not answer and
hands the message to a person; the intent is still returned so it can be routed. The
evidence is the few known questions closest to the message, found with the MiniLM encoder,
so whoever reads the reply (a customer or an agent) can see why this answer was chosen.

A frozen-recipe classifier reads the same MiniLM vector the evidence search does, so a
server can embed each message once instead of twice (``embed_once=True``). That is only
right when the two really share the encoder, so it is checked, not assumed:
:func:`shared_embedding_problem` says why they cannot share, and the assistant refuses
``embed_once`` with that reason.
"""

from __future__ import annotations

import csv
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from llmlab.data import DataFileError, data_file
from llmlab.economics import most_errors_under_cap
from llmlab.embeddings import nearest_neighbours
from llmlab.instruct import wilson_interval

ANSWERS_FILE = "banking77/answers.csv"


def load_answers(root: Path | None = None, intents: Sequence[str] | None = None) -> dict[str, str]:
    """The course's support answer for each BANKING77 intent (data/banking77/answers.csv).

    With ``intents`` given, checks that every intent has exactly one answer.
    """
    return read_answers(data_file(ANSWERS_FILE, root), intents)  # data_file checks presence and the sha256


def read_answers(path: Path, intents: Sequence[str] | None = None) -> dict[str, str]:
    """Parse an intent,answer CSV (for example a company's own answers) and check it covers ``intents``."""
    with open(path, newline="", encoding="utf-8") as handle:
        rows = list(csv.DictReader(handle))
    if not rows or set(rows[0]) != {"intent", "answer"}:
        raise DataFileError(f"{path} must have the columns intent,answer")
    answers = {row["intent"]: row["answer"].strip() for row in rows}
    if len(answers) != len(rows):
        raise DataFileError(f"{path} lists an intent twice")
    if intents is not None:
        missing = [intent for intent in intents if not answers.get(intent)]
        if missing:
            raise DataFileError(f"{path} has no answer for {len(missing)} intents, e.g. {missing[:3]}")
    return answers


@dataclass(frozen=True)
class Evidence:
    """A known question close to the message: its text, its intent and the cosine similarity."""

    text: str
    intent: str
    similarity: float


class NearestQuestions:
    """The known (training) questions closest to a message, by cosine similarity of sentence embeddings.

    ``embed`` maps a list of texts to vectors (n, d), for example
    ``lambda texts: llmlab.embeddings.embed(texts, progress=False)``; ``embeddings``
    may be passed when the known questions were embedded already. The search is
    ``llmlab.embeddings.nearest_neighbours``.
    """

    def __init__(self, texts: Sequence[str], intents: Sequence[str], embed: Callable[[list[str]], torch.Tensor],
                 embeddings=None):
        if len(texts) != len(intents) or not texts:
            raise ValueError(f"expected one intent per known question and at least one question, got {len(texts)} texts and {len(intents)} intents")
        self.texts = list(texts)
        self.intents = list(intents)
        self.embed = embed
        vectors = torch.as_tensor(np.asarray(embed(self.texts) if embeddings is None else embeddings, dtype=np.float32))
        if vectors.ndim != 2 or vectors.shape[0] != len(self.texts):
            raise ValueError(f"embeddings has shape {tuple(vectors.shape)}, expected ({len(self.texts)}, d)")
        self.vectors = vectors

    def nearest(self, texts: list[str], k: int = 3, embeddings=None) -> list[list[Evidence]]:
        """For each text, its ``k`` nearest known questions, most similar first."""
        queries = np.asarray(self.embed(list(texts)) if embeddings is None else embeddings, dtype=np.float32)
        similarities, positions = nearest_neighbours(torch.as_tensor(queries), self.vectors, min(k, len(self.texts)))
        return [[Evidence(self.texts[j], self.intents[j], score) for score, j in zip(row_scores, row_positions)]
                for row_scores, row_positions in zip(similarities.tolist(), positions.tolist())]


@dataclass
class Reply:
    """What the assistant does with one message."""

    intent: str
    confidence: float
    answer: str | None
    handoff: bool
    evidence: list[Evidence] = field(default_factory=list)


# Messages on which a classifier and an evidence search must agree before they share embeddings:
# short ones, and one past the encoders' 128-token window, so a different truncation shows too.
EMBEDDING_PROBES = (
    "my card has not arrived yet",
    "Why was I charged a fee for taking out cash abroad?",
    "I topped up with my card but the money is not in my account and the app says pending. " * 8,
)


def shared_embedding_problem(classifier, evidence: NearestQuestions | None, probes: Sequence[str] = EMBEDDING_PROBES,
                             tolerance: float = 1e-5) -> str | None:
    """Why ``classifier`` cannot score the vectors that ``evidence`` embeds messages into; None when it can.

    Embedding a message once for both is right only when the classifier, given the evidence's
    vectors, says what it says given the texts. Checked on ``probes``: the classifier needs
    ``probabilities_from_embeddings`` (a frozen-recipe ``IntentClassifier`` has it; a classifier
    whose encoder was trained raises ValueError there), and its probabilities and predictions
    from ``evidence.embed(probes)`` must equal those from the texts within ``tolerance``.
    """
    if evidence is None:
        return "there is no evidence search to share the embeddings with"
    needed = ("predict", "predict_proba", "probabilities_from_embeddings")
    if not all(callable(getattr(classifier, name, None)) for name in needed) or not hasattr(classifier, "intents"):
        return f"the classifier ({type(classifier).__name__}) lacks intents or one of {', '.join(needed)}"
    probes = list(probes)
    try:
        from_vectors = np.asarray(classifier.probabilities_from_embeddings(evidence.embed(probes)), dtype=np.float64)
    except (ValueError, RuntimeError) as error:  # a trained encoder, or vectors of another width
        reason = str(error).splitlines()[0] if str(error) else ""
        return f"the classifier cannot read the evidence's vectors ({type(error).__name__}: {reason})"
    from_texts = np.asarray(classifier.predict_proba(probes), dtype=np.float64)
    if from_vectors.shape != from_texts.shape:
        return f"the classifier gives probabilities of shape {from_vectors.shape} from the evidence's vectors, " \
               f"{from_texts.shape} from the texts"
    gap = float(np.abs(from_vectors - from_texts).max())
    if not gap <= tolerance:
        return f"the classifier's probabilities from the evidence's vectors differ from those from the texts by " \
               f"up to {gap:.1e} (tolerance {tolerance:.0e}): the two embed messages differently"
    said, read = classifier.predict(probes), predictions_from_probabilities(from_vectors, classifier.intents)
    if any(a[0] != b[0] or abs(a[1] - b[1]) > tolerance for a, b in zip(said, read)):
        return "the classifier's predict is not the most likely intent of its predict_proba"
    return None


def predictions_from_probabilities(probabilities, intents: Sequence[str]) -> list[tuple[str, float]]:
    """The most likely intent of each row and its probability (``IntentClassifier.predict`` from its probabilities)."""
    probabilities = np.asarray(probabilities)
    best = probabilities.argmax(axis=1)
    return [(intents[i], float(probabilities[row, i])) for row, i in enumerate(best)]


class SupportAssistant:
    """Answers a message when the classifier is confident enough, hands it to a person otherwise.

    ``embed_once=True``: embed each message once, with ``evidence.embed``, and give that vector to
    both the classifier (``probabilities_from_embeddings``) and the evidence search, instead of
    letting each embed it. Allowed only when :func:`shared_embedding_problem` finds none (a
    ValueError names the problem otherwise); the replies then equal those of the default path.
    """

    def __init__(self, classifier, answers: dict[str, str], threshold: float, evidence: NearestQuestions | None = None,
                 evidence_count: int = 3, embed_once: bool = False):
        if not 0 <= threshold <= 1:
            raise ValueError(f"threshold must be in [0, 1], got {threshold}")
        missing = [intent for intent in getattr(classifier, "intents", []) if intent not in answers]
        if missing:
            raise ValueError(f"no answer for {len(missing)} of the classifier's intents, e.g. {missing[:3]}")
        if embed_once:
            problem = shared_embedding_problem(classifier, evidence)
            if problem:
                raise ValueError(f"embed_once=True needs one encoder for the classifier and the evidence: {problem}")
        self.classifier = classifier
        self.answers = answers
        self.threshold = threshold
        self.evidence = evidence
        self.evidence_count = evidence_count
        self.embed_once = bool(embed_once)

    def reply_many(self, texts: list[str]) -> list[Reply]:
        texts = list(texts)
        if self.embed_once:  # checked in __init__: the classifier reads the evidence's vectors as its own
            vectors = self.evidence.embed(texts)
            probabilities = self.classifier.probabilities_from_embeddings(vectors)
            predictions = predictions_from_probabilities(probabilities, self.classifier.intents)
            neighbours = self.evidence.nearest(texts, self.evidence_count, embeddings=vectors)
        else:
            predictions = self.classifier.predict(texts)
            neighbours = self.evidence.nearest(texts, self.evidence_count) if self.evidence else [[] for _ in texts]
        replies = []
        for (intent, confidence), evidence in zip(predictions, neighbours):
            handoff = confidence < self.threshold
            replies.append(Reply(intent, float(confidence), None if handoff else self.answers[intent], handoff, evidence))
        return replies

    def reply(self, text: str) -> Reply:
        return self.reply_many([text])[0]


# --- choosing the threshold ------------------------------------------------------------------


def threshold_sweep(confidences, correct, thresholds=None) -> list[dict]:
    """Automation and wrong-answer rates for each threshold.

    A message is answered automatically when its confidence is at least the threshold.
    ``automation_rate``: answered / all messages. ``wrong_answer_rate``: answered wrongly /
    all messages (so the two can be subtracted and priced per ticket). ``answered_accuracy``:
    correct / answered (NaN when nothing is answered).
    """
    confidences = np.asarray(confidences, dtype=np.float64)
    correct = np.asarray(correct, dtype=bool)
    if confidences.shape != correct.shape or confidences.ndim != 1 or len(confidences) == 0:
        raise ValueError(f"expected two 1-d arrays of the same non-zero length, got shapes {confidences.shape} and {correct.shape}")
    if thresholds is None:
        thresholds = np.linspace(0, 1, 101)
    rows = []
    n = len(confidences)
    for threshold in thresholds:
        answered = confidences >= threshold
        n_answered = int(answered.sum())
        n_wrong = int((answered & ~correct).sum())
        rows.append(dict(
            threshold=float(threshold),
            automation_rate=n_answered / n,
            wrong_answer_rate=n_wrong / n,
            answered_accuracy=(n_answered - n_wrong) / n_answered if n_answered else float("nan"),
        ))
    return rows


def pick_operating_point(sweep: list[dict], max_wrong_answer_rate: float, messages: int, z: float = 1.96) -> dict:
    """The row with the highest automation rate whose wrong-answer rate is under the cap with about 95 % confidence.

    ``sweep`` was measured on ``messages`` validation messages (``threshold_sweep``'s rows). A row is
    allowed when the upper end of the Wilson interval of its wrong-answer rate (z = 1.96: the 95 %
    interval) is at most ``max_wrong_answer_rate``. A rate *measured* just under the cap says little
    about the true rate, which is as likely to lie above it as below; its upper bound under the cap
    says the true rate is under it unless this validation sample was an unlucky one (about 1 in 40 for
    the upper end of a 95 % interval). Because the wrong answers can only fall as the threshold rises,
    the allowed thresholds are all those from the lowest allowed one up, so picking the best of them
    needs no correction for having tried many. ``z = 0`` compares the measured rate itself with the cap
    (the point-estimate rule). Lowest threshold wins ties. Returns the row with ``wrong_answers`` (a
    count) and ``wrong_answer_upper_bound`` added.

    What the promise assumes: the classifier is fixed once the threshold is chosen (retrained, it needs
    a new choice on fresh messages), the validation messages and the traffic are exchangeable (drawn
    alike: no new products, seasons or wordings), and the threshold is chosen once, not re-chosen
    every time the bound lands on the wrong side.
    """
    if isinstance(messages, bool) or not isinstance(messages, (int, np.integer)) or messages < 1:
        raise ValueError(f"messages must be the number of validation messages (an int >= 1), got {messages!r}")
    most_errors = most_errors_under_cap(messages, max_wrong_answer_rate, z)
    allowed = []
    for row in sweep:
        wrong_answers = round(row["wrong_answer_rate"] * messages)
        if abs(wrong_answers - row["wrong_answer_rate"] * messages) > 1e-6:
            raise ValueError(f"wrong_answer_rate {row['wrong_answer_rate']!r} at threshold {row['threshold']} is not a count of "
                             f"{messages} messages: pass the number of messages the sweep was measured on")
        if wrong_answers <= most_errors:
            allowed.append({**row, "wrong_answers": wrong_answers,
                            "wrong_answer_upper_bound": wilson_interval(wrong_answers, messages, z)[1]})
    if most_errors < 0:
        raise ValueError(f"no threshold can keep the wrong-answer rate at or below {max_wrong_answer_rate} with z = {z} on "
                         f"{messages} messages: even 0 wrong answers has a higher upper bound; use more validation messages")
    if not allowed:
        raise ValueError(f"no threshold keeps the wrong-answer rate at or below {max_wrong_answer_rate} with z = {z} on "
                         f"{messages} messages (at most {most_errors} wrong answers allowed)")
    return max(allowed, key=lambda row: (row["automation_rate"], -row["threshold"]))
