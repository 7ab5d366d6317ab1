"""The local front: the SageMaker container contract (``GET /ping``, ``POST /invocations``) as a Starlette app
served by uvicorn. Requests that arrive within ``batch_wait_ms`` of each other run as one mixed batch."""

from __future__ import annotations

import argparse
import asyncio
import json
from pathlib import Path

from starlette.applications import Starlette
from starlette.requests import Request as HttpRequest
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route

from loraops_serving.schema import Request
from loraops_serving.service import Reply, Service, rows_of


class Batcher:
    """Collects parsed requests for ``batch_wait_ms`` (or until ``max_batch_size`` rows), then runs them together
    in a worker thread; one batch at a time."""

    def __init__(self, service: Service) -> None:
        self.service = service
        self.queue: asyncio.Queue[tuple[Request, asyncio.Future]] = asyncio.Queue()
        self.task: asyncio.Task | None = None

    async def submit(self, request: Request) -> Reply:
        if self.task is None:
            self.task = asyncio.create_task(self._loop())
        future = asyncio.get_running_loop().create_future()
        await self.queue.put((request, future))
        return await future

    async def _loop(self) -> None:
        settings = self.service.settings
        while True:
            pending = [await self.queue.get()]
            deadline = asyncio.get_running_loop().time() + settings.batch_wait_ms / 1000
            rows = len(pending[0][0].inputs)
            while rows < settings.max_batch_size:
                timeout = deadline - asyncio.get_running_loop().time()
                if timeout <= 0:
                    break
                try:
                    pending.append(await asyncio.wait_for(self.queue.get(), timeout))
                except TimeoutError:
                    break
                rows += len(pending[-1][0].inputs)
            replies = await asyncio.to_thread(self.service.run, [request for request, _ in pending])
            for (_, future), reply in zip(pending, replies):
                if not future.done():
                    future.set_result(reply)


def create_app(service: Service) -> Starlette:
    batcher = Batcher(service)

    async def ping(_: HttpRequest) -> Response:
        return JSONResponse({"status": "healthy", "adapters": sorted(service.engine.available)})

    async def invocations(http: HttpRequest) -> Response:
        parsed = service.parse(await http.body(), dict(http.headers))
        if isinstance(parsed, Reply):
            return JSONResponse(parsed.body, status_code=parsed.status)
        if parsed.stream:
            (row,) = rows_of(parsed)
            chunks = service.engine.stream(row, parsed.sampling)
            lines = (json.dumps({"token": {"text": piece}}) + "\n" for piece in chunks)
            return StreamingResponse(lines, media_type="application/jsonlines")
        reply = await batcher.submit(parsed)
        return JSONResponse(reply.body, status_code=reply.status)

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
        import threading
        import time
        import urllib.request

        import uvicorn

        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            port = probe.getsockname()[1]
        config = uvicorn.Config(create_app(self.service), host="127.0.0.1", port=port, log_level="warning")
        self._server = uvicorn.Server(config)
        self._thread = threading.Thread(target=self._server.run, daemon=True)
        self._thread.start()
        url = f"http://127.0.0.1:{port}"
        for _ in range(200):
            try:
                urllib.request.urlopen(url + "/ping", timeout=1)
                return url
            except OSError:
                time.sleep(0.05)
        raise RuntimeError(f"the local front did not answer /ping at {url}")

    def __exit__(self, *exc: object) -> None:
        self._server.should_exit = True
        self._thread.join(timeout=10)


def main(argv: list[str] | None = None) -> int:
    """``loraops-serve``: serve a model folder (and adapter folders) on the SageMaker contract's port."""
    import uvicorn

    from loraops_serving.engine import Engine
    from loraops_serving.settings import ServingSettings

    parser = argparse.ArgumentParser(prog="loraops-serve", description=main.__doc__)
    parser.add_argument("--model-dir", type=Path, default=Path("/opt/ml/model"))
    parser.add_argument("--adapter", type=Path, action="append", default=[], help="an adapter folder; repeat")
    parser.add_argument("--host", default="0.0.0.0")
    parser.add_argument("--port", type=int, default=8080)
    args = parser.parse_args(argv)
    engine = Engine(args.model_dir, ServingSettings.from_environment(), args.adapter)
    uvicorn.run(create_app(Service(engine)), host=args.host, port=args.port, log_level="info")
    return 0
