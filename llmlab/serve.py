"""The support assistant as a small HTTP API (FastAPI).

    app = create_app(assistant)          # then: uvicorn.run(app, host="127.0.0.1", port=8000)

    POST /classify  {"text": "my card hasn't arrived"}
    200 {"intent": "card_arrival", "confidence": 0.93, "answer": "Sorry…", "handoff": false,
         "evidence": ["I am still waiting on my card?", …]}
    422 {"detail": [{"loc": ["body", "text"], "msg": "…what is wrong…", "type": "…"}]}

Size: a body longer than ``MAX_BODY_BYTES`` is refused with 413 before it is parsed, whether
the client declares its length or streams it; a message longer than ``MAX_TEXT_CHARACTERS``
characters is refused with 422.

Privacy: by default the log holds no free text at all, only the intent, the confidence, the
decision, the message's length and a keyed hash of it (HMAC-SHA256 with a key that lives only
in the server's memory: it tells an operator that two requests carried the same message,
without the message being recoverable from the log by guessing). Regex redaction
(``llmlab.privacy``) misses names, addresses and formats it was not written for, so logging
the redacted text is an explicit choice: ``create_app(assistant, log_text="redacted")``.
Nothing is stored. The 422 answers leave out the rejected input, so a too-long message full of
personal data is not echoed back into a client's or a proxy's logs either.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import os

from fastapi import FastAPI, HTTPException, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict, Field, StrictStr, field_validator

from llmlab.privacy import redact

MAX_TEXT_CHARACTERS = 1000  # a support message, not a document; longer ones are refused with 422
# The largest body a valid request can need: 1000 characters written as JSON escapes of up to
# 12 bytes each (a character outside the BMP is two \uXXXX escapes), plus the braces and the key.
MAX_BODY_BYTES = 16 * 1024
LOG_TEXT_CHOICES = ("none", "redacted")
logger = logging.getLogger("llmlab.serve")
TOO_LARGE = f"the request body is larger than {MAX_BODY_BYTES:,} bytes; a message has at most {MAX_TEXT_CHARACTERS} characters"


class BodySizeLimit:
    """ASGI middleware: refuse a request body over ``max_bytes`` with 413 before anything reads all of it.

    A declared Content-Length is checked at once; a streamed (chunked) body is counted as it
    arrives and cut off as soon as it passes the limit.
    """

    def __init__(self, app, max_bytes: int = MAX_BODY_BYTES):
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        declared = dict(scope.get("headers", [])).get(b"content-length")
        if declared is not None and (not declared.isdigit() or int(declared) > self.max_bytes):
            response = JSONResponse(status_code=413, content={"detail": [{"loc": ["body"], "msg": TOO_LARGE, "type": "too_large"}]})
            return await response(scope, receive, send)
        received = 0

        async def counted_receive():
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.max_bytes:
                    raise HTTPException(status_code=413, detail=[{"loc": ["body"], "msg": TOO_LARGE, "type": "too_large"}])
            return message

        await self.app(scope, counted_receive, send)


class ClassifyRequest(BaseModel):
    """The body of POST /classify: one customer message."""

    model_config = ConfigDict(extra="forbid")
    text: StrictStr = Field(description=f"the customer's message, 1 to {MAX_TEXT_CHARACTERS} characters, not only spaces")

    @field_validator("text")
    @classmethod
    def readable_message(cls, text: str) -> str:
        if not text.strip():
            raise ValueError("text is empty: send the customer's message, at least one non-space character")
        if len(text) > MAX_TEXT_CHARACTERS:
            raise ValueError(f"text is too long: {len(text)} characters, the limit is {MAX_TEXT_CHARACTERS}")
        return text


class ClassifyResponse(BaseModel):
    intent: str
    confidence: float
    answer: str | None = Field(description="the support answer, or null when the message goes to a person")
    handoff: bool = Field(description="true: the assistant is not confident enough and a person should answer")
    evidence: list[str] = Field(description="the known questions closest to the message")


def _readable_errors(errors) -> list[dict]:
    """Validation errors without the rejected input, with pydantic's wording made plain."""
    plain = []
    for error in errors:
        message = error["msg"].removeprefix("Value error, ")
        if error["type"] == "string_type":
            message = "text must be a string (JSON text in quotes), not a number, list, object or null"
        elif error["type"] == "missing":
            message = "the body must be a JSON object with a field 'text', e.g. {\"text\": \"my card has not arrived\"}"
        elif error["type"] == "extra_forbidden":
            message = "only the field 'text' is accepted"
        elif error["type"] in ("json_invalid", "model_attributes_type", "dict_type"):
            message = "the body must be a JSON object such as {\"text\": \"my card has not arrived\"}"
        plain.append({"loc": list(error["loc"]), "msg": message, "type": error["type"]})
    return plain


def create_app(assistant, log_text: str = "none", hash_key: bytes | None = None) -> FastAPI:
    """A FastAPI app serving ``assistant`` (a :class:`llmlab.assistant.SupportAssistant` or anything with ``reply``).

    ``log_text``: "none" (the default) logs no text of the message; "redacted" adds the message
    after ``llmlab.privacy.redact``. ``hash_key``: the key of the logged message hash (default:
    random, so hashes are comparable only within one server's lifetime).
    """
    if log_text not in LOG_TEXT_CHOICES:
        raise ValueError(f"log_text must be one of {', '.join(LOG_TEXT_CHOICES)}, got {log_text!r}")
    key = hash_key if hash_key is not None else os.urandom(32)
    app = FastAPI(title="Support assistant", description="Classify a customer message, answer it or hand it to a person.")
    app.add_middleware(BodySizeLimit, max_bytes=MAX_BODY_BYTES)

    @app.exception_handler(RequestValidationError)
    async def validation_error(request: Request, error: RequestValidationError) -> JSONResponse:
        return JSONResponse(status_code=422, content={"detail": _readable_errors(error.errors())})

    @app.post("/classify", response_model=ClassifyResponse)
    def classify(request: ClassifyRequest) -> ClassifyResponse:
        reply = assistant.reply(request.text)
        # The raw text never reaches the logger, whatever the log level.
        digest = hmac.new(key, request.text.encode("utf-8"), hashlib.sha256).hexdigest()[:16]
        line = (f"classified a message of {len(request.text)} characters (hash {digest}) as {reply.intent} "
                f"(confidence {reply.confidence:.3f}, handoff {reply.handoff})")
        if log_text == "redacted":
            line += f"; redacted text: {redact(request.text)!r}"
        logger.info(line)
        return ClassifyResponse(intent=reply.intent, confidence=reply.confidence, answer=reply.answer, handoff=reply.handoff,
                                evidence=[item.text for item in reply.evidence])

    @app.get("/health")
    def health() -> dict:
        return {"status": "ok", "threshold": getattr(assistant, "threshold", None)}

    return app
