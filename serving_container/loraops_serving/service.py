"""Requests in, responses out, for any front (the ASGI app, DJL's ``model.py``): parse, validate, run many
requests as few mixed-adapter batches, and answer each with its result or its error (never an exception)."""

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
            "adapter": request.adapter,
        }
        for g in generations
    ]
    return Reply(200, items[0] if request.single else items)


def error(status: int, message: str) -> Reply:
    return Reply(status, {"error": message, "code": status})


class Service:
    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        self.settings = engine.settings

    def parse(self, body: bytes, headers: dict[str, str]) -> Request | Reply:
        try:
            request = parse(body, {k.lower(): v for k, v in headers.items()}, self.settings)
            if request.adapter is not None:
                self.engine.require_adapter(request.adapter)
            rows = rows_of(request)
            self.engine.check_length(rows)
        except RequestError as failure:
            return error(failure.status, str(failure))
        except ValueError as failure:
            return error(400, str(failure))
        return request

    def run(self, requests: list[Request]) -> list[Reply]:
        """Every request's reply; requests that share sampling parameters run together, up to
        ``max_batch_size`` rows and ``max_resident_adapters`` distinct adapters per ``generate`` call."""
        replies: dict[int, Reply] = {}
        groups: dict[Any, list[int]] = {}
        for i, request in enumerate(requests):
            groups.setdefault(request.sampling, []).append(i)
        for sampling, members in groups.items():
            for chunk in self._chunks(members, requests):
                rows = [row for i in chunk for row in rows_of(requests[i])]
                try:
                    generations = self.engine.generate(rows, sampling)
                except RequestError as failure:
                    replies.update({i: error(failure.status, str(failure)) for i in chunk})
                    continue
                except Exception:  # one failed batch must not take the server down; its requests get a 500
                    log.exception("generation failed")
                    replies.update({i: error(500, "generation failed; see the server log") for i in chunk})
                    continue
                for i in chunk:
                    n = len(requests[i].inputs)
                    replies[i] = answer(requests[i], generations[:n])
                    generations = generations[n:]
        return [replies[i] for i in range(len(requests))]

    def handle(self, body: bytes, headers: dict[str, str]) -> Reply:
        parsed = self.parse(body, headers)
        return parsed if isinstance(parsed, Reply) else self.run([parsed])[0]

    def _chunks(self, members: list[int], requests: list[Request]) -> list[list[int]]:
        chunks: list[list[int]] = []
        rows, adapters = 0, set()
        for i in members:
            request = requests[i]
            new = adapters | ({request.adapter} - {None})
            if chunks and (
                rows + len(request.inputs) > self.settings.max_batch_size
                or len(new) > self.settings.max_resident_adapters
            ):
                chunks.append([])
                rows, new = 0, {request.adapter} - {None}
            if not chunks:
                chunks.append([])
            chunks[-1].append(i)
            rows += len(request.inputs)
            adapters = new
        return chunks


def rows_of(request: Request) -> list[Row]:
    return [Row(p, request.adapter, request.max_new_tokens, request.stop) for p in request.inputs]
