"""The local front: the SageMaker container contract (``GET /ping``, ``POST /invocations``) as a Starlette app
served by uvicorn, over the engine's step-level scheduler (requests join the running batch between decode steps).

It cannot hang: a body over ``max_body_bytes`` is refused unread (413); every parsing failure is a 4xx with a
message; a stream whose generation fails ends with an error line and closes; a client that leaves cancels its
request (it leaves the batch at the next step); after SIGTERM, requests in flight get ``drain_seconds`` and then
fail (503) so that the server exits.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import threading
from collections.abc import AsyncIterator
from pathlib import Path

from starlette.applications import Starlette
from starlette.requests import Request as HttpRequest
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route

from loraops_serving.scheduler import Ticket
from loraops_serving.service import Reply, Service, error, outcome_reply, rows_of

log = logging.getLogger("loraops_serving")


DRAIN_FACTOR = 8


class TooLarge(Exception):
    pass


async def read_body(http: HttpRequest, limit: int) -> bytes:
    """The body, or :class:`TooLarge` once it passes ``limit`` bytes (announced or sent). An oversized body of up
    to ``DRAIN_FACTOR`` x ``limit`` is read and dropped before the answer, so that closing the connection does not
    reset it under the client's feet and the client reads its 413; a larger one is refused unread."""
    announced = http.headers.get("content-length")
    if announced is not None and not announced.isdigit():
        raise TooLarge(announced)
    oversized = announced is not None and int(announced) > limit
    if oversized and int(announced) > DRAIN_FACTOR * limit:
        raise TooLarge(announced)
    body, seen = bytearray(), 0
    async for chunk in http.stream():
        seen += len(chunk)
        if seen > DRAIN_FACTOR * limit:
            break
        if seen > limit:
            oversized = True
        if not oversized:
            body += chunk
    if oversized or seen > limit:
        raise TooLarge(seen)
    return bytes(body)


def _listen(ticket: Ticket) -> asyncio.Queue:
    """The ticket's events, delivered on the running loop."""
    loop, queue = asyncio.get_running_loop(), asyncio.Queue()

    def sink(kind: str, payload: object) -> None:
        try:
            loop.call_soon_threadsafe(queue.put_nowait, (kind, payload))
        except RuntimeError:  # the loop is gone (server stopped): nobody is listening
            pass

    ticket.sink = sink
    return queue


async def _until_disconnected(http: HttpRequest) -> None:
    while (await http.receive())["type"] != "http.disconnect":
        pass


async def _next_or_gone(queue: asyncio.Queue, http: HttpRequest, final: set[str]) -> tuple[str, object] | None:
    """The next event among ``final`` kinds, or ``None`` when the client disconnected first."""

    async def wanted() -> tuple[str, object]:
        while True:
            event = await queue.get()
            if event[0] in final:
                return event

    waiter, gone = asyncio.ensure_future(wanted()), asyncio.ensure_future(_until_disconnected(http))
    try:
        await asyncio.wait({waiter, gone}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        gone.cancel()
        if not waiter.done():
            waiter.cancel()
    return waiter.result() if waiter.done() and not waiter.cancelled() else None


def _line(payload: object) -> str:
    return json.dumps(payload, ensure_ascii=False) + "\n"


def create_app(service: Service) -> Starlette:
    settings = service.settings

    async def ping(_: HttpRequest) -> Response:
        engine = service.engine
        health = {"status": "healthy", "adapters": sorted(engine.available), "refused": engine.refused}
        return JSONResponse({**health, "decode_backend": engine.backend.name})  # "graph" on CUDA, else "eager"

    async def invocations(http: HttpRequest) -> Response:
        try:
            body = await read_body(http, settings.max_body_bytes)
        except TooLarge:
            reply = error(413, f"the body is larger than {settings.max_body_bytes} bytes")
            return JSONResponse(reply.body, status_code=reply.status)
        parsed = service.parse(body, dict(http.headers))
        if isinstance(parsed, Reply):
            return JSONResponse(parsed.body, status_code=parsed.status)
        ticket = Ticket(rows_of(parsed))
        queue = _listen(ticket)
        service.engine.scheduler.enqueue(ticket)
        first = await _next_or_gone(queue, http, {"admitted", "error", "done"} if parsed.stream else {"error", "done"})
        if first is None:  # the client left before an answer: stop its generation
            ticket.cancel()
            return Response(status_code=499)
        kind, payload = first
        if kind == "error" or not parsed.stream:
            reply = outcome_reply(parsed, payload)
            return JSONResponse(reply.body, status_code=reply.status)
        return StreamingResponse(_stream(ticket, queue, parsed), media_type="application/jsonlines")

    async def _stream(ticket: Ticket, queue: asyncio.Queue, parsed) -> AsyncIterator[str]:
        try:
            while True:
                kind, payload = await queue.get()
                if kind == "token":
                    yield _line({"token": {"text": payload[1]}})
                elif kind == "done":
                    yield _line(outcome_reply(parsed, payload).body)
                    return
                elif kind == "error":
                    yield _line(error(payload.status, str(payload)).body)
                    return
        finally:  # also when the client disconnected and Starlette cancelled the stream
            ticket.cancel()

    return Starlette(
        routes=[Route("/ping", ping, methods=["GET"]), Route("/invocations", invocations, methods=["POST"])]
    )


class LocalFront:
    """``with LocalFront(service) as url:`` the front on 127.0.0.1 and a free port, in a background thread, ready
    (``/ping`` answered) on entry and stopped on exit."""

    def __init__(self, service: Service) -> None:
        self.service = service

    def __enter__(self) -> str:
        import socket
        import urllib.request

        import uvicorn

        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            port = probe.getsockname()[1]
        config = uvicorn.Config(
            create_app(self.service), host="127.0.0.1", port=port, log_level="warning", timeout_graceful_shutdown=10
        )
        self._server = uvicorn.Server(config)
        self._thread = threading.Thread(target=self._server.run, daemon=True)
        self._thread.start()
        url = f"http://127.0.0.1:{port}"
        ready = threading.Event()
        for _ in range(400):
            if self._server.started:
                urllib.request.urlopen(url + "/ping", timeout=30)
                return url
            ready.wait(0.05)
        raise RuntimeError(f"the local front did not start at {url}")

    def __exit__(self, *exc: object) -> None:
        self._server.should_exit = True
        self._thread.join(timeout=30)


def serve(service: Service, host: str, port: int) -> None:
    """Serve until SIGTERM/SIGINT; then requests in flight get ``drain_seconds`` before they fail (503)."""
    import uvicorn

    drain = service.settings.drain_seconds

    class DrainingServer(uvicorn.Server):
        def handle_exit(self, sig, frame) -> None:
            if not self.should_exit:
                log.warning("signal %s: draining for up to %.0f s", sig, drain)
                timer = threading.Timer(drain, service.engine.scheduler.shutdown)
                timer.daemon = True
                timer.start()
            super().handle_exit(sig, frame)

    config = uvicorn.Config(
        create_app(service), host=host, port=port, log_level="info", timeout_graceful_shutdown=int(drain) + 5
    )
    DrainingServer(config).run()


def main(argv: list[str] | None = None) -> int:
    """``loraops-serve``: serve a model folder (and adapter folders) on the SageMaker contract's port."""
    from loraops_serving.engine import Engine
    from loraops_serving.settings import ServingSettings

    parser = argparse.ArgumentParser(prog="loraops-serve", description=main.__doc__)
    parser.add_argument("--model-dir", type=Path, default=Path("/opt/ml/model"))
    parser.add_argument("--adapter", type=Path, action="append", default=[], help="an adapter folder; repeat")
    parser.add_argument("--host", default="0.0.0.0")
    parser.add_argument("--port", type=int, default=8080)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO)
    engine = Engine(args.model_dir, ServingSettings.from_environment(), args.adapter)
    serve(Service(engine), args.host, args.port)
    return 0
