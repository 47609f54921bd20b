"""POST /classify through real HTTP clients: answers, hand-offs, 413s and 422s with clear messages, logs without free text."""

from __future__ import annotations

import logging
import socket
import threading
import time

import httpx
import numpy as np
import pytest
from fastapi.testclient import TestClient

from llmlab.assistant import NearestQuestions, SupportAssistant, load_answers
from llmlab.serve import MAX_BODY_BYTES, MAX_TEXT_CHARACTERS, create_app


class FakeIntentClassifier:
    """A test double with the interface of llmlab.intents.IntentClassifier: confident only about stolen cards."""

    intents = ["card_arrival", "lost_or_stolen_card"]

    def predict(self, texts):
        return [("lost_or_stolen_card", 0.93) if "stolen" in text else ("card_arrival", 0.31) for text in texts]


def constant_vectors(texts):
    return np.ones((len(texts), 4), dtype=np.float32) / 2.0


def fake_assistant():
    answers = {"card_arrival": "It is on its way.", "lost_or_stolen_card": "Freeze your card in the app now."}
    evidence = NearestQuestions(["my card was stolen"], ["lost_or_stolen_card"], constant_vectors)
    return SupportAssistant(FakeIntentClassifier(), answers, threshold=0.5, evidence=evidence)


@pytest.fixture
def client():
    with TestClient(create_app(fake_assistant())) as test_client:
        yield test_client


def test_confident_message_is_answered(client):
    response = client.post("/classify", json={"text": "my card was stolen"})
    assert response.status_code == 200
    assert response.json() == {"intent": "lost_or_stolen_card", "confidence": pytest.approx(0.93),
                               "answer": "Freeze your card in the app now.", "handoff": False,
                               "evidence": ["my card was stolen"]}


def test_unsure_message_goes_to_a_person(client):
    body = client.post("/classify", json={"text": "hmm, something about my account"}).json()
    assert body["handoff"] is True and body["answer"] is None and body["intent"] == "card_arrival"


@pytest.mark.parametrize("payload, phrase", [
    ({"text": ""}, "text is empty"),
    ({"text": "   \n\t "}, "text is empty"),
    ({"text": "a" * (MAX_TEXT_CHARACTERS + 1)}, f"the limit is {MAX_TEXT_CHARACTERS}"),
    ({"text": 42}, "text must be a string"),
    ({"text": ["my", "card"]}, "text must be a string"),
    ({"text": None}, "text must be a string"),
    ({}, "a field 'text'"),
    ({"text": "hi", "card": "4111111111111111"}, "only the field 'text'"),
    (["my card"], "must be a JSON object"),
])
def test_bad_input_is_a_422_with_a_clear_message(client, payload, phrase):
    response = client.post("/classify", json=payload)
    assert response.status_code == 422
    messages = " | ".join(error["msg"] for error in response.json()["detail"])
    assert phrase in messages
    assert "4111111111111111" not in response.text and "a" * 100 not in response.text  # the input is not echoed


def test_exactly_the_limit_is_accepted(client):
    assert client.post("/classify", json={"text": "b" * MAX_TEXT_CHARACTERS}).status_code == 200


def test_a_body_over_the_limit_is_refused_before_it_is_parsed(client):
    too_long = b'{"text": "' + b"a" * MAX_BODY_BYTES + b'"}'
    declared = client.post("/classify", content=too_long, headers={"content-type": "application/json"})
    assert declared.status_code == 413 and "larger than" in declared.text

    def chunks():  # no Content-Length: the server must count what arrives
        yield b'{"text": "'
        for _ in range(MAX_BODY_BYTES // 1024 + 2):
            yield b"a" * 1024
        yield b'"}'

    streamed = client.post("/classify", content=chunks(), headers={"content-type": "application/json"})
    assert streamed.status_code == 413 and "larger than" in streamed.text
    # the largest valid message, written with JSON escapes, still fits
    escaped = '{"text": "' + "\\ud83d\\ude00" * MAX_TEXT_CHARACTERS + '"}'
    assert len(escaped.encode()) <= MAX_BODY_BYTES
    assert client.post("/classify", content=escaped, headers={"content-type": "application/json"}).status_code == 200


MESSAGE_WITH_SECRETS = "my card 4111 1111 1111 1111 was stolen, I am Ana Souza of 12 Rua Augusta, mail ana+x@mail.example.com"


def test_logs_hold_no_free_text_by_default(client, caplog):
    with caplog.at_level(logging.DEBUG):
        assert client.post("/classify", json={"text": MESSAGE_WITH_SECRETS}).status_code == 200
        assert client.post("/classify", json={"text": MESSAGE_WITH_SECRETS}).status_code == 200
    first, second = [record.getMessage() for record in caplog.records if record.name == "llmlab.serve"]
    assert "lost_or_stolen_card" in first and f"{len(MESSAGE_WITH_SECRETS)} characters" in first
    assert first == second  # the same message gets the same hash, so repeats can be counted
    for secret in ("4111", "Ana", "Souza", "Augusta", "ana+x", "example.com", "stolen,"):
        assert secret not in caplog.text


def test_redacted_text_is_logged_only_when_asked(caplog):
    with TestClient(create_app(fake_assistant(), log_text="redacted")) as test_client, caplog.at_level(logging.INFO):
        assert test_client.post("/classify", json={"text": MESSAGE_WITH_SECRETS}).status_code == 200
    assert "[CARD]" in caplog.text and "[EMAIL]" in caplog.text and "4111" not in caplog.text
    with pytest.raises(ValueError, match="log_text must be one of none, redacted"):
        create_app(fake_assistant(), log_text="everything")


@pytest.fixture(scope="module")
def real_assistant():
    """Lab 4's frozen-recipe classifier on 5 examples per intent, with MiniLM evidence: small, but the real thing."""
    from llmlab.data import banking77, banking77_intents
    from llmlab.embeddings import embed
    from llmlab.intents import sample_per_intent, train_intent_classifier

    train = banking77()["train"]
    intents = banking77_intents()
    keep = sample_per_intent(train["label"], 5, seed=0)
    texts = [train["text"][i] for i in keep]
    labels = np.array(train["label"])[keep]
    embeddings = embed(texts, progress=False)
    classifier = train_intent_classifier(texts, labels, intents, embeddings=embeddings, device="cpu")
    evidence = NearestQuestions(texts, [intents[i] for i in labels], lambda batch: embed(batch, progress=False), embeddings)
    return SupportAssistant(classifier, load_answers(intents=intents), threshold=0.2, evidence=evidence)


def test_end_to_end_with_the_real_classifier(real_assistant):
    with TestClient(create_app(real_assistant)) as test_client:
        body = test_client.post("/classify", json={"text": "My card was stolen yesterday, please block it"}).json()
    assert body["intent"] in ("lost_or_stolen_card", "compromised_card")
    assert 0 < body["confidence"] <= 1 and len(body["evidence"]) == 3
    assert body["handoff"] == (body["confidence"] < 0.2)
    assert body["answer"] is None or body["answer"] == load_answers()[body["intent"]]


def test_embedding_once_equals_embedding_twice_with_the_real_classifier(real_assistant):
    """Lab 4's frozen classifier reads the evidence's MiniLM vectors: the same replies from one encoder pass."""
    from llmlab.assistant import shared_embedding_problem
    from llmlab.load_test import banking77_payloads

    classifier, evidence = real_assistant.classifier, real_assistant.evidence
    once = SupportAssistant(classifier, real_assistant.answers, 0.2, evidence=evidence, embed_once=True)
    messages = [payload["text"] for payload in banking77_payloads(12)]
    expected, replies = real_assistant.reply_many(messages), once.reply_many(messages)
    assert [(r.intent, r.answer, r.handoff) for r in replies] == [(r.intent, r.answer, r.handoff) for r in expected]
    assert [r.evidence for r in replies] == [r.evidence for r in expected]
    assert max(abs(a.confidence - b.confidence) for a, b in zip(replies, expected)) < 1e-6
    # an evidence search over the same vectors with their coordinates reversed finds the same neighbours,
    # but the classifier would read other vectors: refused, in one line
    reversed_evidence = NearestQuestions(evidence.texts, evidence.intents, lambda batch: evidence.embed(batch).flip(1),
                                         evidence.vectors.flip(1))
    def neighbour_texts(search):
        return [[item.text for item in row] for row in search.nearest(messages[:3])]

    assert neighbour_texts(reversed_evidence) == neighbour_texts(evidence)
    with pytest.raises(ValueError, match="embed messages differently") as error:
        SupportAssistant(classifier, real_assistant.answers, 0.2, evidence=reversed_evidence, embed_once=True)
    assert "\n" not in str(error.value)
    assert shared_embedding_problem(classifier, evidence) is None


def _free_loopback_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def test_served_by_uvicorn_on_loopback(real_assistant):
    import uvicorn

    port = _free_loopback_port()
    server = uvicorn.Server(uvicorn.Config(create_app(real_assistant), host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    try:
        deadline = time.monotonic() + 20
        while not server.started:
            if time.monotonic() > deadline or not thread.is_alive():
                pytest.fail("uvicorn did not start within 20 s")
            time.sleep(0.05)
        with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=20) as http:
            ok = http.post("/classify", json={"text": "How do I top up by bank transfer?"})
            refused = http.post("/classify", json={"text": "  "})
        assert ok.status_code == 200 and set(ok.json()) == {"intent", "confidence", "answer", "handoff", "evidence"}
        assert refused.status_code == 422 and "text is empty" in refused.text
    finally:
        server.should_exit = True
        thread.join(timeout=10)
    assert not thread.is_alive()
