"""The support assistant as a small HTTP API (FastAPI).

    app = create_app(assistant)          # then: uvicorn.run(app, host="127.0.0.1", port=8000)

    POST /classify  {"text": "my card hasn't arrived"}
    200 {"intent": "card_arrival", "confidence": 0.93, "answer": "Sorry…", "handoff": false,
         "evidence": ["I am still waiting on my card?", …]}
    422 {"detail": [{"loc": ["body", "text"], "msg": "…what is wrong…", "type": "…"}]}

Privacy: the message is redacted (llmlab.privacy) before it is logged, and only the redacted
text, the intent, the confidence and the decision are logged; nothing is stored. The 422
answers leave out the rejected input, so a too-long message full of personal data is not
echoed back into a client's or a proxy's logs either.
"""

from __future__ import annotations

import logging

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict, Field, StrictStr, field_validator

from llmlab.privacy import redact

MAX_TEXT_CHARACTERS = 1000  # a support message, not a document; longer ones are refused with 422
logger = logging.getLogger("llmlab.serve")


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


def create_app(assistant) -> FastAPI:
    """A FastAPI app serving ``assistant`` (a :class:`llmlab.assistant.SupportAssistant` or anything with ``reply``)."""
    app = FastAPI(title="Support assistant", description="Classify a customer message, answer it or hand it to a person.")

    @app.exception_handler(RequestValidationError)
    async def validation_error(request: Request, error: RequestValidationError) -> JSONResponse:
        return JSONResponse(status_code=422, content={"detail": _readable_errors(error.errors())})

    @app.post("/classify", response_model=ClassifyResponse)
    def classify(request: ClassifyRequest) -> ClassifyResponse:
        # Redact first: the raw text is never passed to the logger, whatever the log level.
        safe_text = redact(request.text)
        reply = assistant.reply(request.text)
        logger.info("classified %r as %s (confidence %.3f, handoff %s)", safe_text, reply.intent, reply.confidence, reply.handoff)
        return ClassifyResponse(intent=reply.intent, confidence=reply.confidence, answer=reply.answer, handoff=reply.handoff,
                                evidence=[item.text for item in reply.evidence])

    @app.get("/health")
    def health() -> dict:
        return {"status": "ok", "threshold": getattr(assistant, "threshold", None)}

    return app
