"""SIGTERM ends the server within its drain bound even while a generation is stuck: ``loraops-serve``'s
``serve`` in a child process, whose decode step is planted to hang after its first token (the stuck task that once
held the server until SIGKILL); its open stream ends with a 503 error line and the process exits."""

from __future__ import annotations

import http.client
import json
import os
import signal
import socket
import subprocess
import sys
import textwrap
import threading

from tests.helpers import ROOT

CHILD = textwrap.dedent(
    """
    import sys, threading
    from loraops_serving.app import serve
    from loraops_serving.engine import Engine
    from loraops_serving.service import Service
    from loraops_serving.settings import ServingSettings

    engine = Engine(sys.argv[1], ServingSettings(drain_seconds=1.0))
    real, never = engine.decode_step, threading.Event()

    def stuck(batch, tokens):  # the first step runs, the second never returns
        if getattr(engine, "stepped", False):
            never.wait(600)
        engine.stepped = True
        return real(batch, tokens)

    engine.decode_step = stuck
    serve(Service(engine), "127.0.0.1", int(sys.argv[2]))
    """
)


def test_sigterm_drains_within_its_bound_and_exits_even_with_a_stuck_generation(tiny_base):
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    child = subprocess.Popen(
        [sys.executable, "-c", CHILD, str(tiny_base), str(port)],
        cwd=ROOT,
        env=env,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        for line in child.stderr:  # uvicorn says when it listens
            if "Uvicorn running on" in line:
                break
        else:
            raise AssertionError(f"the server did not start (exit {child.wait(60)})")
        log = []
        threading.Thread(target=lambda: log.extend(child.stderr), daemon=True).start()  # never let the pipe fill
        connection = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
        body = {"inputs": "Hello", "parameters": {"max_new_tokens": 100}, "stream": True}
        connection.request("POST", "/invocations", json.dumps(body))
        response = connection.getresponse()
        assert response.status == 200
        assert "token" in json.loads(response.readline())  # generating, then stuck
        child.send_signal(signal.SIGTERM)
        rest = [json.loads(line) for line in response.read().decode().splitlines()]
        assert rest[-1] == {"error": "the server is shutting down", "code": 503}
        # uvicorn re-raises the signal once it has shut down, so the exit is "terminated by SIGTERM", in time
        assert child.wait(timeout=60) in (0, -signal.SIGTERM)
    finally:
        if child.poll() is None:
            child.kill()
            child.wait(30)
        child.stderr.close()
