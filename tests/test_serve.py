"""Serving for real: dynamic batching, 429 past the queue, errors kept to their batch,
POST /answer, the command line and the bounded load test. Fast and offline: every
assistant here is a deterministic fake (tests/test_api.py runs the real classifier)."""

from __future__ import annotations

import asyncio
import json
import logging
import threading
import time

import httpx
import numpy as np
import pytest
from fastapi.testclient import TestClient

from llmlab import load_test, serve
from llmlab.assistant import NearestQuestions, SupportAssistant
from llmlab.serve import (
    MAX_ANSWER_BODY_BYTES,
    MAX_QUESTION_CHARACTERS,
    MAX_TENANT_CHARACTERS,
    MAX_TENANTS,
    MicroBatcher,
    create_answer_app,
    create_app,
)

INTENTS = ["card_arrival", "lost_or_stolen_card", "exchange_charge"]
ANSWERS = {intent: f"the answer about {intent}" for intent in INTENTS}
KNOWN = [
    "where is my card",
    "my card was stolen",
    "why a fee for euros",
    "card never came",
]


class PerTextClassifier:
    """Each text's intent and confidence depend on that text alone, as a model's do."""

    intents = INTENTS

    def __init__(self):
        self.batch_sizes: list[int] = []

    def predict(self, texts):
        self.batch_sizes.append(len(texts))
        return [
            (INTENTS[len(text) % 3], (sum(map(ord, text)) % 97) / 96) for text in texts
        ]


def text_features(texts):
    return np.array(
        [
            [len(t) % 7 + 1, t.count("a") + 1, t.count("e") + 1, t.count(" ") + 1]
            for t in texts
        ],
        dtype=np.float32,
    )


def fake_assistant() -> SupportAssistant:
    evidence = NearestQuestions(
        KNOWN, [INTENTS[0], INTENTS[1], INTENTS[2], INTENTS[0]], text_features
    )
    return SupportAssistant(
        PerTextClassifier(), ANSWERS, threshold=0.5, evidence=evidence
    )


MESSAGES = [
    f"message {i}: " + "ae "[i % 3] * (i % 5) + "card" * (i % 4) for i in range(20)
]


async def post_all(app, path: str, bodies: list[dict]) -> list[httpx.Response]:
    """Send ``bodies`` to the app at once, in process, and wait for every response."""
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://test") as http:
        return await asyncio.wait_for(
            asyncio.gather(*(http.post(path, json=body) for body in bodies)), timeout=10
        )


# --- the batcher on its own ---------------------------------------------------------


def test_concurrent_requests_share_one_batched_call():
    calls: list[list[int]] = []

    def double(items):
        calls.append(list(items))
        return [2 * item for item in items]

    async def submit_together(batcher, count):
        return await asyncio.gather(*(batcher.submit(i) for i in range(count)))

    results = asyncio.run(
        submit_together(MicroBatcher(double, max_batch=32, max_wait_ms=50), 10)
    )
    assert results == [2 * i for i in range(10)]  # each caller gets its own result
    assert calls == [list(range(10))]  # ten requests, one call
    calls.clear()
    asyncio.run(submit_together(MicroBatcher(double, max_batch=4, max_wait_ms=50), 10))
    assert [len(call) for call in calls] == [4, 4, 2]  # never more than max_batch
    calls.clear()
    asyncio.run(submit_together(MicroBatcher(double, max_batch=1), 3))
    assert calls == [[0], [1], [2]]  # max_batch=1: batching off


def test_a_batch_waits_max_wait_ms_for_latecomers_and_no_longer():
    calls: list[list[str]] = []

    def record(items):
        calls.append(list(items))
        return items

    async def two_requests(gap_s):
        batcher = MicroBatcher(record, max_batch=32, max_wait_ms=300)
        first = asyncio.ensure_future(batcher.submit("first"))
        await asyncio.sleep(gap_s)
        await asyncio.gather(first, batcher.submit("second"))

    asyncio.run(two_requests(0.02))  # within the 300 ms: one call
    assert calls == [["first", "second"]]
    calls.clear()
    asyncio.run(two_requests(0.45))  # after it: the first went alone
    assert calls == [["first"], ["second"]]


def test_the_batcher_checks_its_settings():
    with pytest.raises(ValueError, match="max_batch must be an int >= 1, got 0"):
        MicroBatcher(list, max_batch=0)
    with pytest.raises(ValueError, match="max_queue must be an int >= 1"):
        MicroBatcher(list, max_queue=2.5)
    with pytest.raises(ValueError, match="max_wait_ms must be from 0 to 1000, got -1"):
        MicroBatcher(list, max_wait_ms=-1)
    with pytest.raises(TypeError, match="needs a method reply_many"):
        create_app(object())


# --- /classify through the batcher ---------------------------------------------------


def test_batched_answers_equal_the_answers_one_by_one():
    bodies = [{"text": text} for text in MESSAGES]
    batched_app = create_app(fake_assistant(), max_batch=32, max_wait_ms=50)
    batched = asyncio.run(post_all(batched_app, "/classify", bodies))
    alone = fake_assistant()
    one_by_one = asyncio.run(
        post_all(create_app(alone, max_batch=1), "/classify", bodies)
    )
    assert max(alone.classifier.batch_sizes) == 1
    assert batched_app.state.batcher.batches < len(bodies)  # it did batch
    assert [r.status_code for r in batched] == [200] * len(bodies)
    assert [r.json() for r in batched] == [r.json() for r in one_by_one]
    grouped_app = create_app(
        fake_assistant(), max_batch=32, max_wait_ms=50, length_group=4
    )
    grouped = asyncio.run(post_all(grouped_app, "/classify", bodies))
    assert [r.json() for r in grouped] == [r.json() for r in one_by_one]
    for text, response in zip(MESSAGES, batched, strict=True):  # and each is its own
        reply = fake_assistant().reply(text)
        assert response.json()["intent"] == reply.intent
        assert response.json()["evidence"] == [item.text for item in reply.evidence]


def test_length_groups_answer_in_the_callers_order():
    calls: list[list[str]] = []

    def shout(texts):
        calls.append(list(texts))
        return [text.upper() for text in texts]

    texts = ["ccc", "a", "dddd", "bb", "e"]
    assert serve.in_length_groups(shout, 2)(texts) == ["CCC", "A", "DDDD", "BB", "E"]
    assert calls == [["a", "e"], ["bb", "ccc"], ["dddd"]]  # short with short
    with pytest.raises(ValueError, match="length_group must be an int >= 1, got 0"):
        serve.in_length_groups(shout, 0)


def test_a_test_client_without_with_gets_answers_request_after_request():
    client = TestClient(
        create_app(fake_assistant())
    )  # as Lab 6 uses it: a loop per request
    first = client.post("/classify", json={"text": "where is my card"})
    second = client.post("/classify", json={"text": "a fee for euros?"})
    assert (first.status_code, second.status_code) == (200, 200)


class Gate:
    """A model that blocks until the test opens it: busy for as long as a test needs."""

    def __init__(self):
        self.started = threading.Event()
        self.opened = threading.Event()

    def reply_many(self, texts):
        self.started.set()
        if not self.opened.wait(timeout=10):
            raise TimeoutError("the test never opened the gate")
        return fake_assistant().reply_many(texts)


def test_past_max_queue_the_server_answers_429_at_once():
    gate = Gate()
    app = create_app(gate, max_batch=1, max_queue=3)
    batcher = app.state.batcher

    async def scenario():
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(
            transport=transport, base_url="http://test"
        ) as http:
            running = asyncio.ensure_future(
                http.post("/classify", json={"text": "first"})
            )
            while not gate.started.is_set():  # the model now holds "first"
                await asyncio.sleep(0.005)
            queued = [
                asyncio.ensure_future(http.post("/classify", json={"text": f"q{i}"}))
                for i in range(3)
            ]
            while batcher.waiting < 3:
                await asyncio.sleep(0.005)
            # the model is still blocked: a queued request could not answer in time
            refused = await asyncio.wait_for(
                http.post("/classify", json={"text": "one too many"}), timeout=2
            )
            gate.opened.set()
            return refused, await asyncio.gather(running, *queued)

    try:
        refused, accepted = asyncio.run(scenario())
    finally:
        gate.opened.set()
    assert refused.status_code == 429
    assert int(refused.headers["Retry-After"]) >= 1
    assert "busy: 3 requests are waiting" in refused.json()["detail"]
    assert [r.status_code for r in accepted] == [
        200
    ] * 4  # the accepted are all answered
    assert batcher.refused == 1


class Fragile:
    """Fails any batch that holds a message with "boom"; counts its batches."""

    def __init__(self):
        self.batches: list[list[str]] = []

    def reply_many(self, texts):
        self.batches.append(list(texts))
        if any("boom" in text for text in texts):
            raise RuntimeError("tensor shapes do not match\nsecond line of the trace")
        return fake_assistant().reply_many(texts)


def test_an_error_fails_only_its_batch_and_the_batcher_keeps_serving(caplog):
    fragile = Fragile()
    app = create_app(fragile, max_batch=8, max_wait_ms=50)
    with caplog.at_level(logging.ERROR, logger="llmlab.serve"):
        failed = asyncio.run(
            post_all(app, "/classify", [{"text": "boom"}, {"text": "fine"}])
        )
    assert fragile.batches == [["boom", "fine"]]  # one batch held both
    for response in failed:
        assert response.status_code == 500
        detail = response.json()["detail"]
        assert "\n" not in detail and "second line" not in detail
        assert detail == (
            "the assistant failed on a batch of 2: RuntimeError: tensor "
            "shapes do not match"
        )
    assert "RuntimeError: tensor shapes do not match" in caplog.text
    after = asyncio.run(post_all(app, "/classify", [{"text": "where is my card"}]))
    assert after[0].status_code == 200 and after[0].json()["intent"] in INTENTS


def test_a_model_returning_too_few_results_is_a_500_not_a_shuffle():
    class Short:
        def reply_many(self, texts):
            return fake_assistant().reply_many(texts[:1])

    app = create_app(Short(), max_batch=8, max_wait_ms=50)
    responses = asyncio.run(post_all(app, "/classify", [{"text": "a"}, {"text": "b"}]))
    assert [r.status_code for r in responses] == [500, 500]
    assert "returned 1 results for 2 inputs" in responses[0].json()["detail"]


# --- /answer ------------------------------------------------------------------------


def fake_answer_batch(calls: list):
    def answer_batch(requests):
        calls.append(requests)
        results = []
        for request in requests:
            if "unknown" in request["question"]:
                results.append({"answer": None, "citations": [], "abstained": True})
            else:
                results.append(
                    {
                        "answer": f"about {request['question']}",
                        "citations": [f"{t}-doc" for t in request["user_tenants"]],
                        "abstained": False,
                    }
                )
        return results

    return answer_batch


@pytest.fixture
def answer_client():
    calls: list = []
    with TestClient(create_answer_app(fake_answer_batch(calls))) as client:
        client.calls = calls
        yield client


def test_answer_and_abstention_have_the_documented_shape(answer_client):
    response = answer_client.post(
        "/answer",
        json={"question": "who wrote the iliad", "user_tenants": ["public", "acme"]},
    )
    assert response.status_code == 200
    assert response.json() == {
        "answer": "about who wrote the iliad",
        "citations": ["public-doc", "acme-doc"],
        "abstained": False,
    }
    assert answer_client.calls[0] == [
        {"question": "who wrote the iliad", "user_tenants": ["public", "acme"]}
    ]
    abstained = answer_client.post(
        "/answer", json={"question": "something unknown", "user_tenants": ["acme"]}
    )
    assert abstained.json() == {"answer": None, "citations": [], "abstained": True}


def test_answers_are_batched_too():
    calls: list = []
    app = create_answer_app(fake_answer_batch(calls), max_batch=16, max_wait_ms=50)
    bodies = [{"question": f"question {i}", "user_tenants": ["t"]} for i in range(6)]
    responses = asyncio.run(post_all(app, "/answer", bodies))
    assert [len(call) for call in calls] == [6]
    assert [r.json()["answer"] for r in responses] == [
        f"about question {i}" for i in range(6)
    ]


@pytest.mark.parametrize(
    "payload, phrase",
    [
        ({"question": "", "user_tenants": ["a"]}, "question is empty"),
        ({"question": " \n", "user_tenants": ["a"]}, "question is empty"),
        (
            {"question": "q" * (MAX_QUESTION_CHARACTERS + 1), "user_tenants": ["a"]},
            f"the limit is {MAX_QUESTION_CHARACTERS}",
        ),
        ({"question": 7, "user_tenants": ["a"]}, "question must be a string"),
        (
            {"question": "q", "user_tenants": "acme"},
            "user_tenants must be a list of strings",
        ),
        (
            {"question": "q", "user_tenants": ["acme", 3]},
            "user_tenants[1] must be a string",
        ),
        ({"question": "q", "user_tenants": []}, "user_tenants is empty"),
        (
            {"question": "q", "user_tenants": ["t"] * (MAX_TENANTS + 1)},
            f"the limit is {MAX_TENANTS}",
        ),
        (
            {"question": "q", "user_tenants": ["ok", "  "]},
            "user_tenants[1] must have 1 to",
        ),
        ({"question": "q"}, "the fields 'question' and 'user_tenants'"),
        (
            {"question": "q", "user_tenants": ["a"], "secret": "4111111111111111"},
            "only the fields 'question' and 'user_tenants' are accepted",
        ),
        (["q"], "must be a JSON object such as"),
    ],
)
def test_bad_answer_requests_are_422s_with_a_clear_message(
    answer_client, payload, phrase
):
    response = answer_client.post("/answer", json=payload)
    assert response.status_code == 422
    assert phrase in " | ".join(error["msg"] for error in response.json()["detail"])
    assert "4111111111111111" not in response.text and "q" * 100 not in response.text
    assert answer_client.calls == []  # nothing bad reaches the model


def test_the_largest_valid_answer_request_fits_the_body_limit(answer_client):
    escaped = "\\ud83d\\ude00"  # one character, 12 bytes as JSON escapes
    body = (
        '{"question": "'
        + escaped * MAX_QUESTION_CHARACTERS
        + '", "user_tenants": ['
        + ", ".join(['"' + escaped * MAX_TENANT_CHARACTERS + '"'] * MAX_TENANTS)
        + "]}"
    )
    assert len(body.encode()) <= MAX_ANSWER_BODY_BYTES
    headers = {"content-type": "application/json"}
    assert (
        answer_client.post("/answer", content=body, headers=headers).status_code == 200
    )
    too_big = body[:-1] + " " * (MAX_ANSWER_BODY_BYTES - len(body) + 1) + "}"  # 1 over
    refused = answer_client.post("/answer", content=too_big, headers=headers)
    assert refused.status_code == 413 and f"{MAX_TENANTS} tenants" in refused.text


@pytest.mark.parametrize(
    "bad, phrase",
    [
        ({"answer": None, "citations": ["d1"], "abstained": True}, "an abstention has"),
        ({"answer": "  ", "citations": [], "abstained": False}, "must have some text"),
        ({"answer": "yes", "citations": "d1", "abstained": False}, "citations:"),
    ],
)
def test_an_answer_of_the_wrong_shape_is_a_500(bad, phrase):
    app = create_answer_app(lambda requests: [bad for _ in requests])
    with TestClient(app) as client:
        response = client.post("/answer", json={"question": "q", "user_tenants": ["a"]})
    assert response.status_code == 500
    assert "answer_batch returned an invalid answer" in response.json()["detail"]
    assert phrase in response.json()["detail"]


# --- the command lines ----------------------------------------------------------------


def test_serving_without_a_saved_classifier_is_one_clear_line(tmp_path, capsys):
    assert serve.main(["classifier", "--runs", str(tmp_path)]) == 2
    error = capsys.readouterr().err.strip()
    assert "\n" not in error
    assert str(tmp_path / "04_fine_tuning" / "frozen") in error and "run Lab 4" in error


def test_serving_lab7_without_its_saved_choices_is_one_clear_line(tmp_path, capsys):
    assert serve.main(["rag", "--runs", str(tmp_path)]) == 2
    error = capsys.readouterr().err.strip()
    assert "\n" not in error
    assert str(tmp_path / "07_building_on_a_model") in error and "run Lab 7" in error


def test_the_rag_command_serves_what_lab7_saved(tmp_path, monkeypatch):
    """The app the command builds answers POST /answer with the rebuilt assistant (a fake encoder)."""
    from fastapi.testclient import TestClient

    from llmlab import rag

    folder = tmp_path / "07_building_on_a_model"
    folder.mkdir()
    (folder / rag.ASSISTANT_FILE).write_text(
        '{"chunk_size": null, "chunk_overlap": 0, "k": 3, "method": "bm25", "threshold": -1.0, '
        '"abstain_on": "retrieval", "answer_sentences": 1}')
    monkeypatch.setattr("llmlab.embeddings.embed",
                        lambda texts, device=None, progress=True: np.ones((len(texts), 4)) + np.eye(len(texts), 4))
    app = serve.build_parser().parse_args(["rag", "--runs", str(tmp_path), "--max-batch", "4"])
    with TestClient(app.build(app)) as client:
        response = client.post("/answer", json={"question": "who sang story of an artist",
                                                "user_tenants": ["wikipedia"]})
    assert response.status_code == 200 and response.json()["citations"], response.json()


class FrozenFeatureClassifier:
    """A frozen-recipe classifier's double: a fixed linear head over ``encoder``'s vectors."""

    intents = INTENTS
    head = np.array(
        [[0.9, -0.4, 0.3], [0.2, 0.8, -0.5], [-0.6, 0.1, 0.7], [0.3, -0.2, 0.4]]
    )

    def __init__(self, encoder=text_features):
        self.encoder = encoder

    def probabilities_from_embeddings(self, embeddings):
        logits = np.asarray(embeddings, dtype=np.float64) @ self.head
        return np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True)

    def predict_proba(self, texts):
        return self.probabilities_from_embeddings(self.encoder(texts))

    def predict(self, texts):
        probabilities = self.predict_proba(texts)
        return [(INTENTS[row.argmax()], float(row.max())) for row in probabilities]


def test_the_classifier_command_embeds_once_only_where_the_encoder_is_shared(capsys):
    embedded: list[int] = []

    def counted_features(texts):
        embedded.append(len(texts))
        return text_features(texts)

    known_intents = [INTENTS[0], INTENTS[1], INTENTS[2], INTENTS[0]]
    shared = NearestQuestions(KNOWN, known_intents, counted_features)
    once = serve.support_assistant_embedding_once_if_shared(
        FrozenFeatureClassifier(), ANSWERS, 0.7, shared
    )
    assert once.embed_once
    assert capsys.readouterr().out.startswith("embedding each message once")
    twice = SupportAssistant(FrozenFeatureClassifier(), ANSWERS, 0.7, evidence=shared)
    bodies = [{"text": text} for text in MESSAGES]
    served = asyncio.run(
        post_all(create_app(once, length_group=4), "/classify", bodies)
    )
    expected = asyncio.run(post_all(create_app(twice), "/classify", bodies))
    assert [r.status_code for r in served] == [200] * len(bodies)
    assert [r.json() for r in served] == [r.json() for r in expected]
    assert {r.json()["handoff"] for r in served} == {True, False}
    # a classifier with its own encoder (the same features, scaled): embedded twice, said so
    scaled: list[int] = []

    def scaled_features(texts):
        scaled.append(len(texts))
        return 2 * text_features(texts)

    other = FrozenFeatureClassifier(encoder=scaled_features)
    fallback = serve.support_assistant_embedding_once_if_shared(
        other, ANSWERS, 0.7, shared
    )
    line = capsys.readouterr().out.strip()
    assert not fallback.embed_once and "\n" not in line
    assert line.startswith("embedding each message twice (classifier, then evidence)")
    assert "embed messages differently" in line
    embedded.clear(), scaled.clear()
    fallback.reply_many(MESSAGES)
    assert embedded == scaled == [len(MESSAGES)]  # each embeds with its own function


@pytest.mark.parametrize(
    "url",
    [
        "http://example.com/classify",
        "http://10.0.0.7:8000/classify",
        "http://127.0.0.1.example.com/classify",
        "http://localhost@example.com/classify",
        "ftp://127.0.0.1/classify",
    ],
)
def test_the_load_test_refuses_other_machines(url, capsys):
    with pytest.raises(ValueError, match="only targets this machine"):
        load_test.run_load_test(url, [{"text": "hi"}], concurrency=1, requests=1)
    assert load_test.main(["--url", url, "--requests", "1"]) == 2
    error = capsys.readouterr().err.strip()
    assert error.startswith("error: the load test only targets") and "\n" not in error


def test_the_load_test_is_bounded():
    with pytest.raises(ValueError, match="requests must be an int from 1 to"):
        load_test.run_load_test(
            "http://127.0.0.1:9/x", [{}], 1, load_test.MAX_REQUESTS + 1
        )


def test_uvicorn_and_the_load_test_round_trip(tmp_path):
    payloads = [{"text": text} for text in MESSAGES]
    rows = load_test.throughput_curve(
        lambda: create_app(fake_assistant(), max_batch=4, max_wait_ms=20),
        payloads,
        concurrencies=[1, 4],
        requests=24,
        warmup_requests=4,
    )
    assert [row["concurrency"] for row in rows] == [1, 4]
    for row in rows:
        assert (row["ok"], row["too_many"], row["other"], row["errors"]) == (
            24,
            0,
            0,
            0,
        )
        assert 0 < row["p50_ms"] <= row["p95_ms"] <= row["p99_ms"] < 10_000
        assert row["answered_per_s"] == pytest.approx(24 / row["seconds"])
    assert rows[0]["mean_batch"] == 1  # one client: nothing to batch with
    assert 1 < rows[1]["mean_batch"] <= 4
    table = load_test.format_table(rows)
    assert table.splitlines()[0].split()[:3] == [
        "concurrency",
        "requests/s",
        "answered/s",
    ]
    jsonl = tmp_path / "bodies.jsonl"
    jsonl.write_text(
        "\n".join(json.dumps(p) for p in payloads[:2]) + "\n", encoding="utf-8"
    )
    assert load_test.read_payloads(jsonl) == payloads[:2]


def test_refused_requests_are_counted_as_429s():
    gate = Gate()

    def factory():
        return create_app(gate, max_batch=1, max_queue=1)

    started = time.perf_counter()
    try:
        with load_test.serve_in_thread(factory()) as base_url:
            threading.Timer(0.5, gate.opened.set).start()
            row = load_test.run_load_test(
                base_url + "/classify", [{"text": "x"}], concurrency=6, requests=30
            )
    finally:
        gate.opened.set()
    assert row["too_many"] > 0 and row["ok"] + row["too_many"] == 30
    assert row["refused_share"] == pytest.approx(row["too_many"] / 30)
    assert time.perf_counter() - started < 10


def test_a_polite_client_waits_as_retry_after_asks():
    gate = Gate()
    try:
        with load_test.serve_in_thread(
            create_app(gate, max_batch=1, max_queue=1)
        ) as url:
            threading.Timer(0.2, gate.opened.set).start()
            row = load_test.run_load_test(
                url + "/classify",
                [{"text": "x"}],
                concurrency=3,
                requests=4,
                honour_retry_after=True,
            )
    finally:
        gate.opened.set()
    # the third client was refused while the model was blocked, then waited >= 1 s
    assert row["too_many"] >= 1 and row["ok"] + row["too_many"] == 4
    assert row["seconds"] >= 1.0
