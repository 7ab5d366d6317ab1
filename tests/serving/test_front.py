"""The local front over HTTP (uvicorn on 127.0.0.1, a free port): the SageMaker contract, every bad request
answered 4xx with a message while the server keeps serving, a concurrent burst that runs as one batch, and
streaming."""

from __future__ import annotations

import json
import threading
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor

import pytest

from loraops_serving.engine import Row
from loraops_serving.schema import Sampling


@pytest.fixture(scope="module")
def server(engine):
    from loraops_serving.app import LocalFront
    from loraops_serving.service import Service

    with LocalFront(Service(engine)) as url:
        yield url


def post(url: str, body, headers: dict | None = None) -> tuple[int, object]:
    data = body if isinstance(body, bytes) else json.dumps(body).encode()
    request = urllib.request.Request(url + "/invocations", data=data, headers=headers or {}, method="POST")
    try:
        with urllib.request.urlopen(request, timeout=60) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as error:
        return error.code, json.loads(error.read())


PROMPT = "### Instruction:\nWhat is a llama?\n\n### Response:\n"


def test_ping_and_routing_by_body_or_header(server, engine):
    with urllib.request.urlopen(server + "/ping") as response:
        health = {"status": "healthy", "adapters": ["alpha", "beta"], "refused": {}}
        assert json.loads(response.read()) == {**health, "decode_backend": engine.backend.name}
    expected = engine.generate([Row(PROMPT, "beta", 6)], Sampling())[0].text
    body = {"inputs": PROMPT, "parameters": {"max_new_tokens": 6}}
    status, by_body = post(server, {**body, "adapter": "beta"})
    assert status == 200 and by_body["generated_text"] == expected and by_body["adapter"] == "beta"
    status, by_header = post(server, body, {"X-Amzn-SageMaker-Adapter-Identifier": "beta"})
    assert status == 200 and by_header["generated_text"] == expected
    status, listed = post(server, {"inputs": [PROMPT, PROMPT], "parameters": {"max_new_tokens": 3}})
    assert status == 200 and len(listed) == 2 and listed[0]["details"]["generated_tokens"] <= 3


@pytest.mark.parametrize(
    ("body", "status", "message"),
    [
        (b"{not json", 400, "not JSON"),
        ([1, 2], 400, "must be a JSON object"),
        ({"inputs": ""}, 400, "non-empty string"),
        ({"inputs": "x", "prompt": "y"}, 400, "unknown fields ['prompt']"),
        ({"inputs": "x", "parameters": {"max_new_tokens": 100000}}, 400, "max_new_tokens=100000 is outside"),
        ({"inputs": "x", "parameters": {"max_new_tokens": 2.5}}, 400, "must be an integer"),
        ({"inputs": "x", "parameters": {"temperature": -1}}, 400, "temperature=-1 is outside"),
        ({"inputs": "x", "parameters": {"top_p": 0}}, 400, "top_p=0 is outside"),
        ({"inputs": "x", "parameters": {"beam": 4}}, 400, "unknown parameters ['beam']"),
        ({"inputs": "x", "parameters": {"stop": ["a"] * 5}}, 400, "at most 4 strings"),
        ({"inputs": ["x"] * 17}, 400, "at most 16 per request"),
        ({"inputs": "x", "adapter": "gamma"}, 404, "no adapter 'gamma'; available: ['alpha', 'beta']"),
        ({"inputs": "x", "stream": "yes"}, 400, "stream must be true or false"),
        ({"inputs": "word " * 3000}, 400, "exceed the"),
    ],
)
def test_bad_requests_get_a_clear_answer_and_the_server_keeps_serving(server, body, status, message):
    code, answer = post(server, body if isinstance(body, (bytes, dict)) else json.dumps(body).encode())
    assert code == status and message in answer["error"], answer
    assert post(server, {"inputs": "Hi", "parameters": {"max_new_tokens": 2}})[0] == 200


def test_a_concurrent_burst_runs_as_one_batch_answered_right_with_ping_healthy(server, engine):
    """Batching is proven by events, not timing: the first request's prefill is held until the other requests
    are queued; they then join it, and one decode step runs all of them."""
    adapters = ["alpha", "beta", None]
    expected = {a: engine.generate([Row(PROMPT, a, 5)], Sampling())[0].text for a in adapters}
    jobs = [adapters[i % 3] for i in range(12)]
    scheduler, prefill, step = engine.scheduler, engine.prefill, engine.decode_step
    first_in, go, step_rows = threading.Event(), threading.Event(), []

    def held_prefill(seqs):
        first_in.set()
        assert go.wait(120), "the test never released the worker"
        return prefill(seqs)

    def counted_step(batch, tokens):
        step_rows.append(len(tokens))
        return step(batch, tokens)

    engine.prefill, engine.decode_step = held_prefill, counted_step  # the real forwards run, observed
    try:
        with ThreadPoolExecutor(len(jobs)) as pool:
            body = lambda a: {"inputs": PROMPT, "parameters": {"max_new_tokens": 5}, **({"adapter": a} if a else {})}
            futures = [pool.submit(post, server, body(jobs[0]))]
            assert first_in.wait(120)
            futures += [pool.submit(post, server, body(a)) for a in jobs[1:]]
            assert scheduler.wait_for(lambda: len(scheduler.waiting) == len(jobs) - 1, 120), "requests not queued"
            with urllib.request.urlopen(server + "/ping", timeout=30) as response:  # healthy while busy
                assert response.status == 200
            engine.prefill = prefill
            go.set()
            results = [f.result() for f in futures]
    finally:
        del engine.prefill, engine.decode_step
    assert max(step_rows) == len(jobs), step_rows  # all twelve ran in one decode step
    assert [status for status, _ in results] == [200] * len(jobs)
    assert [answer["generated_text"] for _, answer in results] == [expected[a] for a in jobs]


def test_streaming_sends_the_text_piece_by_piece(server, engine):
    expected = engine.generate([Row(PROMPT, "alpha", 8)], Sampling())[0].text
    request = urllib.request.Request(
        server + "/invocations",
        data=json.dumps(
            {"inputs": PROMPT, "adapter": "alpha", "stream": True, "parameters": {"max_new_tokens": 8}}
        ).encode(),
        method="POST",
    )
    with urllib.request.urlopen(request, timeout=60) as response:
        lines = [json.loads(line) for line in response.read().decode().splitlines()]
    pieces = [line["token"]["text"] for line in lines[:-1]]
    assert len(pieces) > 1 and "".join(pieces) == expected
    assert lines[-1]["generated_text"] == expected and lines[-1]["adapter"] == "alpha"
