"""The course's assistants as small HTTP APIs (FastAPI), served with dynamic batching.

    app = create_app(assistant)    # then: uvicorn.run(app, host="127.0.0.1", port=8000)
    python -m llmlab.serve classifier --runs runs    # the same, from what Lab 4 saved
    python -m llmlab.serve rag --runs runs           # Lab 7's grounded assistant, POST /answer

    POST /classify  {"text": "my card hasn't arrived"}
    200 {"intent": "card_arrival", "confidence": 0.93, "answer": "Sorry…",
         "handoff": false, "evidence": ["I am still waiting on my card?", …]}
    422 {"detail": [{"loc": ["body", "text"], "msg": "…what is wrong…", "type": "…"}]}
    429 {"detail": "the server is busy: …"}   with a Retry-After header (seconds)
    500 {"detail": "the assistant failed on a batch of 12: …"}   one line

``create_answer_app(answer_batch)`` serves a grounded (retrieval-augmented) assistant
the same way: POST /answer {"question": "…", "user_tenants": ["acme"]} ->
{"answer": "…" or null, "citations": ["doc-3", …], "abstained": false}.

Dynamic batching (Chapter 5's lesson applied to a service): every model call pays a
fixed cost beside its arithmetic (Python and framework overhead, hand-offs between
threads; on a GPU, reading all the weights), and one-message calls running side by
side on a few cores fight over the cores as well. A :class:`MicroBatcher` collects
the requests that arrive together, for at most ``max_wait_ms`` after the first of them
or until ``max_batch`` wait, and runs ONE batched call of the model in a worker
thread, so the event loop keeps accepting requests meanwhile; each caller then gets
its own result. ``max_batch=1`` turns batching off (one request per model call, still
one call at a time).
``create_app(..., length_group=16)`` runs each batch as groups of messages of similar
length, since an encoder pads every message of a call to the longest one.
``python -m llmlab.serve classifier`` also embeds each message once, not once for the
classifier and once for the evidence, where the two are checked to share the encoder
(``llmlab.assistant.shared_embedding_problem``; a frozen-recipe classifier does).

Past capacity: a bounded queue. When ``max_queue`` requests are already waiting, a new
one is refused at once with 429 Too Many Requests and a Retry-After header (an estimate
of the seconds the waiting requests need). The alternatives are worse for a support
chat: an unbounded queue accepts everything and lets every request's latency grow
without limit while the backlog grows; a timeout makes a client wait the whole timeout
and then throws away work the model may already have done. A 429 costs the client a
retry and nothing else, and the requests the server accepts wait for at most about
``max_queue / max_batch`` batches.

Errors: if the model raises on a batch, each request of that batch gets a 500 with one
line naming the error (its type and the first line of its message, so a model whose
errors quote their input puts that input in the answer and the log), and the batcher
goes on with the next batch. One request that breaks the model fails the requests
batched with it, not the ones after.

Size: a body longer than ``MAX_BODY_BYTES`` (``MAX_ANSWER_BODY_BYTES`` for /answer) is
refused with 413 before it is parsed, whether the client declares its length or streams
it; a message longer than ``MAX_TEXT_CHARACTERS`` characters is refused with 422.

Privacy: by default the log holds no free text at all, only the intent, the confidence,
the decision, the message's length and a keyed hash of it (HMAC-SHA256 with a key that
lives only in the server's memory: it tells an operator that two requests carried the
same message, without the message being recoverable from the log by guessing). Regex
redaction (``llmlab.privacy``) misses names, addresses and formats it was not written
for, so logging the redacted text is an explicit choice:
``create_app(assistant, log_text="redacted")``. Nothing is stored. The 422 answers leave
out the rejected input, so a too-long message full of personal data is not echoed back
into a client's or a proxy's logs either.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import hashlib
import hmac
import logging
import math
import os
import sys
import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from fastapi import FastAPI, HTTPException, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    StrictStr,
    ValidationError,
    field_validator,
    model_validator,
)

from llmlab.privacy import redact

# a support message, not a document; longer ones are refused with 422
MAX_TEXT_CHARACTERS = 1000
# The largest body a valid request can need: 1000 characters written as JSON escapes of
# up to 12 bytes each (a character outside the BMP is two \uXXXX escapes), plus the
# braces and the key.
MAX_BODY_BYTES = 16 * 1024
MAX_QUESTION_CHARACTERS = 1000
MAX_TENANTS = 16  # tenants one user may read; more is refused with 422
MAX_TENANT_CHARACTERS = 64
ESCAPED_BYTES_PER_CHARACTER = 12
# /answer: the question and every tenant name, each character as the longest escape,
# plus the quotes and commas around them and the keys: a bound, not a guess.
MAX_ANSWER_BODY_BYTES = (
    ESCAPED_BYTES_PER_CHARACTER
    * (MAX_QUESTION_CHARACTERS + MAX_TENANTS * MAX_TENANT_CHARACTERS)
    + 4 * MAX_TENANTS
    + 64
)
LOG_TEXT_CHOICES = ("none", "redacted")
logger = logging.getLogger("llmlab.serve")
TOO_LARGE = (
    f"the request body is larger than {MAX_BODY_BYTES:,} bytes; "
    f"a message has at most {MAX_TEXT_CHARACTERS} characters"
)
TOO_LARGE_ANSWER = (
    f"the request body is larger than {MAX_ANSWER_BODY_BYTES:,} bytes; a question has "
    f"at most {MAX_QUESTION_CHARACTERS} characters and {MAX_TENANTS} tenants"
)
# where Lab 4 saves its classifiers: <runs>/04_fine_tuning/<recipe>
LAB4_FOLDER = "04_fine_tuning"


class BodySizeLimit:
    """ASGI middleware: refuse a body over ``max_bytes`` with 413 before it is all read.

    A declared Content-Length is checked at once; a streamed (chunked) body is counted
    as it arrives and cut off as soon as it passes the limit.
    """

    def __init__(self, app, max_bytes: int = MAX_BODY_BYTES, message: str = TOO_LARGE):
        self.app = app
        self.max_bytes = max_bytes
        self.message = message

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        too_large = [{"loc": ["body"], "msg": self.message, "type": "too_large"}]
        declared = dict(scope.get("headers", [])).get(b"content-length")
        if declared is not None and (
            not declared.isdigit() or int(declared) > self.max_bytes
        ):
            response = JSONResponse(status_code=413, content={"detail": too_large})
            return await response(scope, receive, send)
        received = 0

        async def counted_receive():
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.max_bytes:
                    raise HTTPException(status_code=413, detail=too_large)
            return message

        await self.app(scope, counted_receive, send)


# --- dynamic batching ---------------------------------------------------------------


class QueueFull(Exception):
    """:meth:`MicroBatcher.submit` raises it at once when the queue is full."""

    def __init__(self, waiting: int, retry_after_s: int):
        super().__init__(
            f"the server is busy: {waiting} requests are waiting, as many as it "
            f"queues; retry in {retry_after_s} s"
        )
        self.retry_after_s = retry_after_s


class BatchFailed(Exception):
    """The batched call that held this request raised; the message is one line."""


@dataclass
class _Waiting:
    item: Any
    future: asyncio.Future
    arrived: float  # the event loop's clock


def one_line(error: BaseException, limit: int = 200) -> str:
    """``ValueError: the first line of its message``, at most ``limit`` characters."""
    lines = str(error).strip().splitlines()
    text = f"{type(error).__name__}: {lines[0]}" if lines else type(error).__name__
    return text if len(text) <= limit else text[: limit - 1] + "…"


class MicroBatcher:
    """Groups concurrent requests into one call of ``predict_batch(items) -> results``.

    ``await batcher.submit(item)`` returns that item's result. A worker task waits for a
    first request, then for more until ``max_wait_ms`` have passed since the first one
    arrived or ``max_batch`` wait, and runs ``predict_batch`` on them in a thread. At
    most ``max_queue`` requests wait; :class:`QueueFull` refuses the next one at once.
    """

    def __init__(
        self,
        predict_batch: Callable[[list], Sequence],
        max_batch: int = 32,
        max_wait_ms: float = 5.0,
        max_queue: int = 256,
    ):
        for name, value in (("max_batch", max_batch), ("max_queue", max_queue)):
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be an int >= 1, got {value!r}")
        if not 0 <= max_wait_ms <= 1000:
            raise ValueError(f"max_wait_ms must be from 0 to 1000, got {max_wait_ms!r}")
        self.predict_batch = predict_batch
        self.max_batch = max_batch
        self.max_wait_s = max_wait_ms / 1000
        self.max_queue = max_queue
        self.batches = 0  # calls of predict_batch, and the requests they held
        self.batched_requests = 0
        self.refused = 0
        self.last_batch_seconds = 0.0
        self._loop = None
        self._waiting: deque[_Waiting] = deque()
        self._arrived: asyncio.Event | None = None
        self._worker: asyncio.Task | None = None

    def _start_in_this_loop(self) -> None:
        """Start the worker in the running event loop, once per loop (a TestClient used
        without ``with`` runs each request in an event loop of its own)."""
        loop = asyncio.get_running_loop()
        if loop is not self._loop:
            self._loop = loop
            self._waiting = deque()
            self._arrived = asyncio.Event()
            self._worker = None
        if self._worker is None or self._worker.done():
            self._worker = loop.create_task(self._serve_batches())

    @property
    def waiting(self) -> int:
        """Requests waiting for a batch now (not those the model is running)."""
        return len(self._waiting)

    def retry_after_s(self) -> int:
        """Whole seconds, at least 1, the waiting requests need at the last pace."""
        batches_ahead = math.ceil(len(self._waiting) / self.max_batch) + 1
        return max(1, math.ceil(batches_ahead * self.last_batch_seconds))

    async def submit(self, item):
        self._start_in_this_loop()
        if len(self._waiting) >= self.max_queue:
            self.refused += 1
            raise QueueFull(len(self._waiting), self.retry_after_s())
        future = self._loop.create_future()
        self._waiting.append(_Waiting(item, future, self._loop.time()))
        self._arrived.set()
        return await future

    async def _next_batch(self) -> list[_Waiting]:
        while not self._waiting:
            self._arrived.clear()
            await self._arrived.wait()
        deadline = self._waiting[0].arrived + self.max_wait_s
        while len(self._waiting) < self.max_batch:
            left = deadline - self._loop.time()
            if left <= 0:
                break
            self._arrived.clear()
            try:
                await asyncio.wait_for(self._arrived.wait(), timeout=left)
            except TimeoutError:
                break
        size = min(self.max_batch, len(self._waiting))
        taken = [self._waiting.popleft() for _ in range(size)]
        return [request for request in taken if not request.future.done()]  # cancelled

    async def _serve_batches(self) -> None:
        while True:
            batch = await self._next_batch()
            if batch:
                await self._run(batch)

    async def _run(self, batch: list[_Waiting]) -> None:
        started = time.perf_counter()
        items = [request.item for request in batch]
        try:
            results = list(await asyncio.to_thread(self.predict_batch, items))
            if len(results) != len(batch):
                raise ValueError(
                    f"predict_batch returned {len(results)} results "
                    f"for {len(batch)} inputs"
                )
        except asyncio.CancelledError:  # the server stops while the model runs
            for request in batch:
                if not request.future.done():
                    request.future.set_exception(BatchFailed("the server is stopping"))
            raise
        except Exception as error:  # each caller of this batch hears of it; on we go
            message = (
                f"the assistant failed on a batch of {len(batch)}: {one_line(error)}"
            )
            logger.error(message)
            for request in batch:
                if not request.future.done():
                    request.future.set_exception(BatchFailed(message))
            return
        finally:
            self.last_batch_seconds = time.perf_counter() - started
            self.batches += 1
            self.batched_requests += len(batch)
        for request, result in zip(batch, results, strict=True):
            if not request.future.done():
                request.future.set_result(result)

    async def aclose(self) -> None:
        """Stop the worker; requests still waiting get BatchFailed."""
        if self._loop is not asyncio.get_running_loop():
            return  # started in another event loop, which stopped it
        if self._worker is not None and not self._worker.done():
            self._worker.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._worker
        while self._waiting:
            request = self._waiting.popleft()
            if not request.future.done():
                request.future.set_exception(BatchFailed("the server is stopping"))


def in_length_groups(predict_texts: Callable[[list[str]], Sequence], size: int):
    """``predict_texts`` run on groups of ``size`` texts of similar length, in order.

    An encoder pads every text of a call to the longest one, so one long message in a
    batch of short ones makes the whole batch pay for its length. Sorting by length
    first (in characters, a stand-in for tokens) and cutting the batch into groups keeps
    that waste small, at the price of more calls.
    """
    if isinstance(size, bool) or not isinstance(size, int) or size < 1:
        raise ValueError(f"length_group must be an int >= 1, got {size!r}")

    def predict(texts: list[str]) -> list:
        by_length = sorted(range(len(texts)), key=lambda i: len(texts[i]))
        results: list = [None] * len(texts)
        for start in range(0, len(by_length), size):
            group = by_length[start : start + size]
            answers = list(predict_texts([texts[i] for i in group]))
            if len(answers) != len(group):
                raise ValueError(
                    f"predict returned {len(answers)} results for {len(group)} inputs"
                )
            for position, answer in zip(group, answers, strict=True):
                results[position] = answer
        return results

    return predict


# --- request and response bodies ---------------------------------------------------


class ClassifyRequest(BaseModel):
    """The body of POST /classify: one customer message."""

    model_config = ConfigDict(extra="forbid")
    text: StrictStr = Field(
        description=f"the customer's message, 1 to {MAX_TEXT_CHARACTERS} characters, "
        "not only spaces"
    )

    @field_validator("text")
    @classmethod
    def readable_message(cls, text: str) -> str:
        if not text.strip():
            raise ValueError(
                "text is empty: send the customer's message, "
                "at least one non-space character"
            )
        if len(text) > MAX_TEXT_CHARACTERS:
            raise ValueError(
                f"text is too long: {len(text)} characters, "
                f"the limit is {MAX_TEXT_CHARACTERS}"
            )
        return text


class ClassifyResponse(BaseModel):
    intent: str
    confidence: float
    answer: str | None = Field(
        description="the support answer, or null when the message goes to a person"
    )
    handoff: bool = Field(
        description="true: the assistant is not confident enough; a person answers"
    )
    evidence: list[str] = Field(
        description="the known questions closest to the message"
    )


class AnswerRequest(BaseModel):
    """The body of POST /answer: a question, and the tenants whose documents may answer.

    In a real product the tenants come from the caller's verified identity (a signed
    token a gateway checks), never from what a client claims; this API takes them in the
    body so that the lab can show the permission filter, and belongs behind such a
    gateway.
    """

    model_config = ConfigDict(extra="forbid")
    question: StrictStr = Field(
        description=f"1 to {MAX_QUESTION_CHARACTERS} characters, not only spaces"
    )
    user_tenants: list[StrictStr] = Field(
        description=f"1 to {MAX_TENANTS} tenants, each of 1 to "
        f"{MAX_TENANT_CHARACTERS} characters"
    )

    @field_validator("question")
    @classmethod
    def readable_question(cls, question: str) -> str:
        if not question.strip():
            raise ValueError("question is empty: send at least one non-space character")
        if len(question) > MAX_QUESTION_CHARACTERS:
            raise ValueError(
                f"question is too long: {len(question)} characters, "
                f"the limit is {MAX_QUESTION_CHARACTERS}"
            )
        return question

    @field_validator("user_tenants")
    @classmethod
    def readable_tenants(cls, tenants: list[str]) -> list[str]:
        if not tenants:
            raise ValueError("user_tenants is empty: name a tenant the user may read")
        if len(tenants) > MAX_TENANTS:
            raise ValueError(
                f"user_tenants names {len(tenants)} tenants, the limit is {MAX_TENANTS}"
            )
        for position, tenant in enumerate(tenants):
            if not tenant.strip() or len(tenant) > MAX_TENANT_CHARACTERS:
                raise ValueError(
                    f"user_tenants[{position}] must have 1 to "
                    f"{MAX_TENANT_CHARACTERS} characters, not only spaces "
                    f"(it has {len(tenant)})"
                )
        return tenants


class AnswerResponse(BaseModel):
    answer: str | None = Field(
        description="the grounded answer, or null when the assistant abstains"
    )
    citations: list[str] = Field(description="ids of the sources the answer cites")
    abstained: bool = Field(
        description="true: nothing the user may read answers the question"
    )

    @model_validator(mode="after")
    def consistent(self) -> "AnswerResponse":
        if self.abstained and (self.answer is not None or self.citations):
            raise ValueError("an abstention has answer null and no citations")
        if not self.abstained and not (self.answer or "").strip():
            raise ValueError("an answer that does not abstain must have some text")
        return self


@dataclass(frozen=True)
class BodyShape:
    """What the 422 messages tell a client about the body an endpoint expects."""

    needs: str  # "the body must be a JSON object with <needs>"
    only: str  # the answer to a field the endpoint does not take
    example: str


CLASSIFY_BODY = BodyShape(
    "a field 'text'",
    "only the field 'text' is accepted",
    '{"text": "my card has not arrived"}',
)
ANSWER_BODY = BodyShape(
    "the fields 'question' and 'user_tenants'",
    "only the fields 'question' and 'user_tenants' are accepted",
    '{"question": "who wrote the iliad", "user_tenants": ["public"]}',
)


def _field_name(loc) -> str:
    """("body", "user_tenants", 0) -> "user_tenants[0]"; ("body", "text") -> "text"."""
    name = ""
    for part in list(loc)[1:]:
        if isinstance(part, int):
            name += f"[{part}]"
        else:
            name += f".{part}" if name else str(part)
    return name or "the body"


def _readable_errors(errors, shape: BodyShape = CLASSIFY_BODY) -> list[dict]:
    """Validation errors without the rejected input, pydantic's wording made plain."""
    plain = []
    for error in errors:
        field = _field_name(error["loc"])
        message = error["msg"].removeprefix("Value error, ")
        if error["type"] == "string_type":
            message = (
                f"{field} must be a string (JSON text in quotes), "
                "not a number, list, object or null"
            )
        elif error["type"] == "list_type":
            message = f'{field} must be a list of strings, e.g. ["public"]'
        elif error["type"] == "missing":
            message = (
                f"the body must be a JSON object with {shape.needs}, "
                f"e.g. {shape.example}"
            )
        elif error["type"] == "extra_forbidden":
            message = shape.only
        elif error["type"] in ("json_invalid", "model_attributes_type", "dict_type"):
            message = f"the body must be a JSON object such as {shape.example}"
        plain.append({"loc": list(error["loc"]), "msg": message, "type": error["type"]})
    return plain


def _keyed_hash(key: bytes, text: str) -> str:
    return hmac.new(key, text.encode("utf-8"), hashlib.sha256).hexdigest()[:16]


def _batched_app(
    title: str,
    description: str,
    batcher: MicroBatcher,
    max_bytes: int,
    too_large: str,
    shape: BodyShape,
) -> FastAPI:
    """A FastAPI app with what both assistants share: the size limit, plain 422s, the
    batcher's 429s and 500s, and the batcher stopped when the server stops."""

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI):
        yield
        await batcher.aclose()

    app = FastAPI(title=title, description=description, lifespan=lifespan)
    app.add_middleware(BodySizeLimit, max_bytes=max_bytes, message=too_large)
    app.state.batcher = batcher  # llmlab.load_test reads its mean batch size

    @app.exception_handler(RequestValidationError)
    async def validation_error(request: Request, error: RequestValidationError):
        detail = _readable_errors(error.errors(), shape)
        return JSONResponse(status_code=422, content={"detail": detail})

    @app.exception_handler(QueueFull)
    async def queue_full(request: Request, error: QueueFull) -> JSONResponse:
        return JSONResponse(
            status_code=429,
            content={"detail": str(error)},
            headers={"Retry-After": str(error.retry_after_s)},
        )

    @app.exception_handler(BatchFailed)
    async def batch_failed(request: Request, error: BatchFailed) -> JSONResponse:
        return JSONResponse(status_code=500, content={"detail": str(error)})

    return app


def create_app(
    assistant,
    log_text: str = "none",
    hash_key: bytes | None = None,
    max_batch: int = 32,
    max_wait_ms: float = 5.0,
    max_queue: int = 256,
    length_group: int | None = None,
) -> FastAPI:
    """A FastAPI app serving ``assistant`` at POST /classify, requests batched.

    ``assistant``: a :class:`llmlab.assistant.SupportAssistant` or anything with
    ``reply_many(texts) -> replies``. ``log_text``: "none" (the default) logs no text of
    the message; "redacted" adds the message after ``llmlab.privacy.redact``.
    ``hash_key``: the key of the logged message hash (default: random, so hashes are
    comparable only within one server's lifetime). ``max_batch``, ``max_wait_ms``,
    ``max_queue``: the :class:`MicroBatcher`'s (``max_batch=1``: no batching).
    ``length_group``: run each batch as groups of this many messages of similar length
    (:func:`in_length_groups`); None: the whole batch in one call.
    """
    if log_text not in LOG_TEXT_CHOICES:
        raise ValueError(
            f"log_text must be one of {', '.join(LOG_TEXT_CHOICES)}, got {log_text!r}"
        )
    if not callable(getattr(assistant, "reply_many", None)):
        raise TypeError(
            f"the assistant ({type(assistant).__name__}) needs a method "
            "reply_many(texts) -> replies, which the batcher calls"
        )
    key = hash_key if hash_key is not None else os.urandom(32)
    predict = assistant.reply_many
    if length_group is not None:
        predict = in_length_groups(assistant.reply_many, length_group)
    batcher = MicroBatcher(predict, max_batch, max_wait_ms, max_queue)
    app = _batched_app(
        "Support assistant",
        "Classify a customer message, answer it or hand it to a person.",
        batcher,
        MAX_BODY_BYTES,
        TOO_LARGE,
        CLASSIFY_BODY,
    )

    @app.post("/classify", response_model=ClassifyResponse)
    async def classify(request: ClassifyRequest) -> ClassifyResponse:
        reply = await batcher.submit(request.text)
        # The raw text never reaches the logger, whatever the log level.
        line = (
            f"classified a message of {len(request.text)} characters "
            f"(hash {_keyed_hash(key, request.text)}) as {reply.intent} "
            f"(confidence {reply.confidence:.3f}, handoff {reply.handoff})"
        )
        if log_text == "redacted":
            line += f"; redacted text: {redact(request.text)!r}"
        logger.info(line)
        return ClassifyResponse(
            intent=reply.intent,
            confidence=reply.confidence,
            answer=reply.answer,
            handoff=reply.handoff,
            evidence=[item.text for item in reply.evidence],
        )

    @app.get("/health")
    def health() -> dict:
        return {"status": "ok", "threshold": getattr(assistant, "threshold", None)}

    return app


def create_answer_app(
    answer_batch: Callable[[list[dict]], list[dict]],
    hash_key: bytes | None = None,
    max_batch: int = 32,
    max_wait_ms: float = 5.0,
    max_queue: int = 256,
) -> FastAPI:
    """A FastAPI app serving a grounded assistant at POST /answer, batched as /classify.

    ``answer_batch`` takes a list of requests
    ``{"question": str, "user_tenants": [str, ...]}`` and returns one
    ``{"answer": str | None, "citations": [id, ...], "abstained": bool}`` per request,
    in order. A result of another shape is a 500, not a silent repair. The
    log holds the question's length and keyed hash, never its text.
    """
    key = hash_key if hash_key is not None else os.urandom(32)
    batcher = MicroBatcher(answer_batch, max_batch, max_wait_ms, max_queue)
    app = _batched_app(
        "Grounded assistant",
        "Answer a question from the documents its asker may read, with citations, "
        "or abstain.",
        batcher,
        MAX_ANSWER_BODY_BYTES,
        TOO_LARGE_ANSWER,
        ANSWER_BODY,
    )

    @app.post("/answer", response_model=AnswerResponse)
    async def answer(request: AnswerRequest) -> AnswerResponse:
        result = await batcher.submit(request.model_dump())
        try:
            response = AnswerResponse.model_validate(result)
        except ValidationError as error:
            problem = error.errors()[0]
            where = ".".join(str(part) for part in problem["loc"])
            what = problem["msg"].removeprefix("Value error, ")
            raise BatchFailed(
                "answer_batch returned an invalid answer: "
                + (f"{where}: {what}" if where else what)
            ) from None
        logger.info(
            f"answered a question of {len(request.question)} characters "
            f"(hash {_keyed_hash(key, request.question)}) for "
            f"{len(request.user_tenants)} tenants: abstained "
            f"{response.abstained}, {len(response.citations)} citations"
        )
        return response

    @app.get("/health")
    def health() -> dict:
        return {"status": "ok"}

    return app


# --- the command line: python -m llmlab.serve classifier --runs runs ------------------


class NothingSaved(Exception):
    """The runs folder lacks what a lab saves; the message names the folder and lab."""


def classifier_assistant_from_runs(
    runs,
    recipe: str = "frozen",
    threshold: float | None = None,
    max_wrong_answer_rate: float = 0.02,
    device=None,
):
    """Lab 6's assistant around a classifier Lab 4 saved in ``<runs>/04_fine_tuning``.

    ``recipe`` names the subfolder. The known questions (the evidence) are the BANKING77
    training messages Lab 4 trained on; the answers, data/banking77/answers.csv. Without
    ``threshold`` it is chosen by Lab 6's rule (the most automation whose 95 % Wilson
    upper bound on wrong answers is at most ``max_wrong_answer_rate``) on the 10 % of
    the training split that Lab 4 holds out for validation at its cpu and gpu presets
    (a smoke-preset classifier trained on some of those messages, so its threshold
    comes out optimistic).
    """
    folder = Path(runs) / LAB4_FOLDER / recipe
    if not folder.is_dir():
        raise NothingSaved(
            f"no saved classifier in {folder}: run Lab 4 "
            "(solutions/04_fine_tuning.ipynb), which saves it there, or pass --runs "
            f"the folder that holds {LAB4_FOLDER}/"
        )
    import numpy as np

    from llmlab.assistant import (
        NearestQuestions,
        load_answers,
        pick_operating_point,
        threshold_sweep,
    )
    from llmlab.data import banking77
    from llmlab.embeddings import embed
    from llmlab.intents import IntentClassifier

    try:
        classifier = IntentClassifier.load(folder, device=device)
    except FileNotFoundError as error:
        raise NothingSaved(
            f"{error}: run Lab 4 (solutions/04_fine_tuning.ipynb) again to save it"
        ) from None
    split = banking77()["train"].train_test_split(
        test_size=0.1, seed=0
    )  # Lab 4's split
    train, validation = split["train"], split["test"]
    intents = train.features["label"].names
    if classifier.intents != intents:
        raise NothingSaved(
            f"the classifier in {folder} does not know BANKING77's 77 "
            "intents in their order: Lab 4 did not save it"
        )
    known = list(train["text"])
    print(f"evidence: embedding the {len(known):,} training messages of Lab 4")
    evidence = NearestQuestions(
        known,
        [intents[label] for label in train["label"]],
        embed=lambda batch: embed(batch, device=device, progress=False),
        embeddings=embed(known, device=device),
    )
    if threshold is None:
        probabilities = classifier.predict_proba(
            list(validation["text"]), progress=True
        )
        correct = probabilities.argmax(axis=1) == np.array(validation["label"])
        thresholds = np.round(np.linspace(0, 1, 101), 2)
        sweep = threshold_sweep(probabilities.max(axis=1), correct, thresholds)
        chosen = pick_operating_point(sweep, max_wrong_answer_rate, len(validation))
        threshold = chosen["threshold"]
        print(
            f"threshold {threshold:.2f}, by Lab 6's rule on Lab 4's "
            f"{len(validation):,} "
            f"validation messages: automation {chosen['automation_rate']:.1%}, wrong "
            f"answers {chosen['wrong_answer_rate']:.2%} (95 % upper bound "
            f"{chosen['wrong_answer_upper_bound']:.2%}, "
            f"cap {max_wrong_answer_rate:.0%})"
        )
    return support_assistant_embedding_once_if_shared(
        classifier, load_answers(intents=intents), threshold, evidence
    )


def support_assistant_embedding_once_if_shared(
    classifier, answers, threshold, evidence
):
    """A ``SupportAssistant`` that embeds each message once where that is checked right.

    A frozen-recipe classifier reads the MiniLM vector the evidence search computes, so
    one encoder pass serves both (``embed_once``); a classifier whose encoder was trained
    (recipe lora or finetune) cannot, and then each message is embedded twice. Either
    way one line says which, and why.
    """
    from llmlab.assistant import SupportAssistant, shared_embedding_problem

    problem = shared_embedding_problem(classifier, evidence)
    if problem is None:
        print(
            "embedding each message once: the classifier reads the evidence's vectors"
        )
    else:
        print(f"embedding each message twice (classifier, then evidence): {problem}")
    return SupportAssistant(
        classifier,
        answers,
        threshold=threshold,
        evidence=evidence,
        embed_once=problem is None,
    )


def _classifier_app(options) -> FastAPI:
    assistant = classifier_assistant_from_runs(
        options.runs, options.recipe, options.threshold
    )
    return create_app(
        assistant,
        log_text=options.log_text,
        max_batch=options.max_batch,
        max_wait_ms=options.max_wait_ms,
        max_queue=options.max_queue,
        length_group=options.length_group,
    )


def _answer_app(options) -> FastAPI:
    from llmlab.rag import assistant_from_runs

    try:
        assistant = assistant_from_runs(options.runs)
    except FileNotFoundError as error:
        raise NothingSaved(str(error)) from None
    return create_answer_app(
        assistant.answer_batch,
        max_batch=options.max_batch,
        max_wait_ms=options.max_wait_ms,
        max_queue=options.max_queue,
    )


def _at_least_one(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def _add_server_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--host",
        default="127.0.0.1",
        help="the address to listen on (default: this machine only)",
    )
    parser.add_argument("--port", type=int, default=8000)
    parser.add_argument(
        "--max-batch",
        type=_at_least_one,
        default=32,
        help="the most requests per batch (1: no batching)",
    )
    parser.add_argument(
        "--max-wait-ms",
        type=float,
        default=5.0,
        help="how long a batch's first request waits for others",
    )
    parser.add_argument(
        "--max-queue",
        type=_at_least_one,
        default=256,
        help="the most waiting requests; past it, 429 with Retry-After",
    )


def build_parser() -> argparse.ArgumentParser:
    """One subcommand per assistant; each sets ``build(options) -> app``."""
    parser = argparse.ArgumentParser(
        prog="python -m llmlab.serve",
        description="Serve a course assistant with uvicorn.",
    )
    commands = parser.add_subparsers(dest="assistant", required=True)
    classifier = commands.add_parser(
        "classifier", help="Lab 6's support assistant (POST /classify)"
    )
    classifier.add_argument(
        "--runs",
        type=Path,
        default=Path(os.environ.get("LLMLAB_RUNS") or "runs"),
        help="the runs folder of the labs (default: $LLMLAB_RUNS or runs)",
    )
    classifier.add_argument(
        "--recipe",
        choices=("frozen", "finetune", "lora"),
        default="frozen",
        help="which of Lab 4's saved classifiers",
    )
    classifier.add_argument(
        "--threshold",
        type=float,
        default=None,
        help="below this confidence a person answers (default: chosen by Lab 6's rule)",
    )
    classifier.add_argument("--log-text", choices=LOG_TEXT_CHOICES, default="none")
    classifier.add_argument(
        "--length-group",
        type=_at_least_one,
        default=16,
        help="run a batch as groups of this many messages of similar length "
        "(default: 16)",
    )
    _add_server_options(classifier)
    classifier.set_defaults(build=_classifier_app)
    grounded = commands.add_parser(
        "rag", help="Lab 7's grounded assistant over CLAP NQ (POST /answer)"
    )
    grounded.add_argument(
        "--runs",
        type=Path,
        default=Path(os.environ.get("LLMLAB_RUNS") or "runs"),
        help="the runs folder of the labs (default: $LLMLAB_RUNS or runs)",
    )
    _add_server_options(grounded)
    grounded.set_defaults(build=_answer_app)
    return parser


def main(argv: list[str] | None = None) -> int:
    options = build_parser().parse_args(argv)
    try:
        app = options.build(options)
    except NothingSaved as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    import uvicorn

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    uvicorn.run(app, host=options.host, port=options.port, log_level="info")
    return 0


if __name__ == "__main__":
    sys.exit(main())
