"""Requests in, responses out, for any front (the ASGI app, DJL's ``model.py``): parse and validate (every
failure a 4xx with a message, never an exception), hand the rows to the engine's scheduler, and turn its outcome
into a reply."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

from loraops_serving.engine import Engine, Generation, Row
from loraops_serving.schema import Request, RequestError, parse

log = logging.getLogger("loraops_serving")


@dataclass
class Reply:
    status: int
    body: Any


def answer(request: Request, generations: list[Generation]) -> Reply:
    items = [
        {
            "generated_text": g.text,
            "details": {"finish_reason": g.finish_reason, "generated_tokens": g.tokens},
            "adapter": adapter,
        }
        for g, adapter in zip(generations, request.adapters)
    ]
    return Reply(200, items[0] if request.single else items)


def error(status: int, message: str) -> Reply:
    message = message.encode("utf-8", "backslashreplace").decode("utf-8")  # lone surrogates cannot be sent
    return Reply(status, {"error": message, "code": status})


def outcome_reply(request: Request, outcome: list[Generation] | RequestError) -> Reply:
    if isinstance(outcome, RequestError):
        return error(outcome.status, str(outcome))
    return answer(request, outcome)


class Service:
    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        self.settings = engine.settings

    def parse(self, body: bytes, headers: dict[str, str]) -> Request | Reply:
        """The request, or the 4xx reply that says what is wrong with it. No tokenizing here: only the
        scheduler's thread uses the tokenizer."""
        try:
            request = parse(body, {k.lower(): v for k, v in headers.items()}, self.settings)
            for adapter in set(request.adapters) - {None}:
                self.engine.require_adapter(adapter)
        except RequestError as failure:
            return error(failure.status, str(failure))
        except Exception as failure:  # anything else a hostile body provokes is still the body's fault
            log.warning("unreadable request: %r", failure)
            return error(400, f"the request could not be read: {type(failure).__name__}")
        return request

    def handle(self, body: bytes, headers: dict[str, str], timeout: float = 600) -> Reply:
        """One request, answered when done (the DJL door; the ASGI front streams and cancels)."""
        parsed = self.parse(body, headers)
        if isinstance(parsed, Reply):
            return parsed
        return outcome_reply(parsed, self.engine.scheduler.submit(rows_of(parsed)).wait(timeout))


def rows_of(request: Request) -> list[Row]:
    return [
        Row(p, adapter, request.max_new_tokens, request.stop, request.sampling)
        for p, adapter in zip(request.inputs, request.adapters)
    ]
