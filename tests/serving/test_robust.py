"""The front cannot hang and never answers wrongly: a failing generation ends its stream with an error line (and
a plain request with a 500), a client that leaves stops its generation at the next step and frees the engine,
only the scheduler's thread tokenizes, a seeded request gets the same answer alone, in a batch and streamed, and
hostile bodies get 4xx with a message."""

from __future__ import annotations

import contextlib
import http.client
import json
import threading
import urllib.parse
from concurrent.futures import ThreadPoolExecutor

import pytest

from tests.serving.test_front import PROMPT, post


@pytest.fixture(scope="module")
def server(engine):
    from loraops_serving.app import LocalFront
    from loraops_serving.service import Service

    with LocalFront(Service(engine)) as url:
        yield url


def open_stream(url: str, body: dict) -> tuple[http.client.HTTPConnection, http.client.HTTPResponse]:
    where = urllib.parse.urlsplit(url)
    connection = http.client.HTTPConnection(where.hostname, where.port, timeout=60)
    connection.request(
        "POST", "/invocations", json.dumps({**body, "stream": True}), {"Content-Type": "application/json"}
    )
    return connection, connection.getresponse()


def stream_lines(url: str, body: dict) -> list[dict]:
    connection, response = open_stream(url, body)
    try:
        assert response.status == 200
        return [json.loads(line) for line in response.read().decode().splitlines()]
    finally:
        connection.close()


def test_a_stream_whose_generation_fails_ends_with_an_error_line_and_closes(server, engine):
    real, calls = engine.decode_step, []

    def failing(batch, tokens):
        calls.append(len(tokens))
        if len(calls) == 2:
            raise RuntimeError("planted failure in the second decode step")
        return real(batch, tokens)

    engine.decode_step = failing  # the real forward, but the second step fails
    try:
        lines = stream_lines(server, {"inputs": PROMPT, "parameters": {"max_new_tokens": 30}})
    finally:
        del engine.decode_step
    assert lines[0]["token"]["text"] is not None  # the stream had started (200 and tokens) before the failure
    assert lines[-1] == {"error": "generation failed; see the server log", "code": 500}
    assert post(server, {"inputs": PROMPT, "parameters": {"max_new_tokens": 2}})[0] == 200


def test_a_request_whose_generation_fails_answers_500_json(server, engine):
    def failing(seqs):
        raise RuntimeError("planted failure in prefill")

    engine.prefill = failing
    try:
        status, answer = post(server, {"inputs": PROMPT, "parameters": {"max_new_tokens": 3}})
    finally:
        del engine.prefill
    assert status == 500 and answer["error"] == "generation failed; see the server log"


@contextlib.contextmanager
def holding_decode_step(engine, step: int):
    """The scheduler's worker held inside decode step ``step`` (1-based) until ``go`` is set; ``held`` is set once it
    is there, ``steps`` counts the steps taken. On leaving, the worker is released and the engine's own step back."""
    real = engine.decode_step
    assert engine.scheduler.wait_for(engine.scheduler.idle, 60)
    held, go, steps = threading.Event(), threading.Event(), []

    def gated(batch, tokens):
        steps.append(len(tokens))
        if len(steps) == step:
            held.set()
            assert go.wait(120)
        return real(batch, tokens)

    engine.decode_step = gated
    try:
        yield held, go, steps
    finally:
        go.set()
        del engine.decode_step


def test_a_dropped_stream_stops_generating_at_the_next_step_and_frees_the_engine(server, engine):
    scheduler = engine.scheduler
    # the worker held inside step 2 while the client leaves
    with holding_decode_step(engine, step=2) as (held, go, steps):
        connection, response = open_stream(server, {"inputs": PROMPT, "parameters": {"max_new_tokens": 400}})
        assert json.loads(response.readline())["token"]
        assert held.wait(60)
        (ticket,) = scheduler.live
        connection.close()  # the client leaves
        assert ticket.cancelled.wait(60), "the front did not notice the client leaving"
        go.set()
        assert scheduler.wait_for(scheduler.idle, 60)
    assert ticket.outcome.status == 499 and len(steps) == 2  # it left at the first step boundary after the drop
    assert sum(engine.in_use.values()) == 0


def test_only_the_scheduler_thread_tokenizes(server, engine):
    """A fast tokenizer used from two threads at once fails intermittently ('Unable to create tensor'): the
    front must not tokenize on the event loop while the worker tokenizes."""
    real, threads = engine.tokenizer, set()

    class Recording:
        def __call__(self, *args, **kwargs):
            threads.add(threading.current_thread().name)
            return real(*args, **kwargs)

        def __getattr__(self, name):
            threads.add(threading.current_thread().name)
            return getattr(real, name)

    engine.tokenizer = Recording()
    try:
        with ThreadPoolExecutor(6) as pool:
            body = {"inputs": [PROMPT, PROMPT + "x"], "parameters": {"max_new_tokens": 3}}
            results = list(pool.map(lambda _: post(server, body), range(12)))
    finally:
        engine.tokenizer = real
    assert [status for status, _ in results] == [200] * 12
    assert threads == {"loraops-scheduler"}


def test_a_seeded_request_gets_the_same_answer_alone_in_a_batch_and_streamed(server, engine):
    seeded = {"inputs": PROMPT, "parameters": {"max_new_tokens": 12, "temperature": 1.5, "top_k": 50, "seed": 7}}
    status, alone = post(server, seeded)
    assert status == 200
    others = [{"inputs": PROMPT, "parameters": {"max_new_tokens": 12, "temperature": 1.5}}] * 3
    others.append({"inputs": "Tell me a story.", "parameters": {"max_new_tokens": 20}, "adapter": "beta"})
    together = [seeded, *others, seeded, seeded]
    prefill, first_in, go = engine.prefill, threading.Event(), threading.Event()

    def held(seqs):
        first_in.set()
        assert go.wait(120)
        return prefill(seqs)

    engine.prefill = held  # the first request waits in prefill until all the others are queued: one batch
    try:
        with ThreadPoolExecutor(len(together)) as pool:
            futures = [pool.submit(post, server, together[0])]
            assert first_in.wait(60)
            futures += [pool.submit(post, server, body) for body in together[1:]]
            scheduler = engine.scheduler
            assert scheduler.wait_for(lambda: len(scheduler.waiting) == len(together) - 1, 60)
            engine.prefill = prefill
            go.set()
            answers = [f.result() for f in futures]
    finally:
        go.set()
        engine.__dict__.pop("prefill", None)
    texts = [answer["generated_text"] for _, answer in answers]
    assert texts[0] == texts[-2] == texts[-1] == alone["generated_text"]
    assert len({texts[1], texts[2], texts[3], texts[0]}) > 1, "unseeded sampling should differ from the seeded one"
    streamed = stream_lines(server, seeded)
    assert streamed[-1]["generated_text"] == alone["generated_text"]
    assert "".join(line["token"]["text"] for line in streamed[:-1]) == alone["generated_text"]


@pytest.mark.parametrize(
    ("body", "status", "message"),
    [
        (b"[" * 100_000 + b"]" * 100_000, 400, "nested too deeply"),
        (b'{"inputs": "\\ud800"}', 400, "inputs[0] is not valid Unicode"),
        (b'{"inputs": "Hi", "parameters": {"stop": ["\\udfff"]}}', 400, "parameters.stop is not valid Unicode"),
        (b'{"inputs": "Hi", "adapter": "\\ud800"}', 400, "adapter is not valid Unicode"),
        (b'{"\\ud800": 1}', 400, "unknown fields ['\\ud800']"),
        (b'{"inputs": "\xff\xfe"}', 400, "not JSON"),
        (b'{"inputs": "Hi", "parameters": {"max_new_tokens": 1e999}}', 400, "must be an integer"),
        (b'{"inputs": "x"' + b" " * 1_100_000 + b"}", 413, "larger than 1048576 bytes"),
    ],
    ids=["nested", "surrogate", "stop-surrogate", "adapter-surrogate", "key-surrogate", "bad-utf8", "inf", "huge"],
)
def test_hostile_bodies_get_4xx_with_a_message(server, body, status, message):
    code, answer = post(server, body)
    assert code == status and message in answer["error"], answer


def test_a_chunked_body_over_the_limit_is_refused(server):
    where = urllib.parse.urlsplit(server)
    connection = http.client.HTTPConnection(where.hostname, where.port, timeout=60)
    chunks = (b"x" * 65536 for _ in range(64))  # 4 MiB, no Content-Length
    connection.request("POST", "/invocations", chunks, {"Content-Type": "application/json"}, encode_chunked=True)
    response = connection.getresponse()
    assert response.status == 413 and "larger than" in json.loads(response.read())["error"]
    connection.close()


def test_a_claimed_huge_body_is_refused_unread(server):
    where = urllib.parse.urlsplit(server)
    connection = http.client.HTTPConnection(where.hostname, where.port, timeout=60)
    connection.putrequest("POST", "/invocations")
    connection.putheader("Content-Length", str(100 * 2**20))  # 100 MiB announced, a few bytes sent
    connection.endheaders()
    connection.send(b'{"inputs": "')
    response = connection.getresponse()
    assert response.status == 413 and "larger than" in json.loads(response.read())["error"]
    connection.close()


def test_a_client_that_leaves_a_plain_request_stops_its_generation(server, engine):
    scheduler = engine.scheduler
    with holding_decode_step(engine, step=1) as (held, go, steps):
        where = urllib.parse.urlsplit(server)
        connection = http.client.HTTPConnection(where.hostname, where.port, timeout=60)
        connection.request(
            "POST", "/invocations", json.dumps({"inputs": PROMPT, "parameters": {"max_new_tokens": 300}})
        )
        assert held.wait(60)
        (ticket,) = scheduler.live
        connection.close()  # the client gives up before the answer
        assert ticket.cancelled.wait(60), "the front did not notice the client leaving"
        go.set()
        assert scheduler.wait_for(scheduler.idle, 60)
    assert ticket.outcome.status == 499 and len(steps) == 1


def test_any_exception_while_parsing_is_a_400_with_a_message(engine, monkeypatch):
    """Stands in for a parsing failure nobody foresaw (the schema's own checks raise BadRequest)."""
    from loraops_serving import service as service_module

    def unforeseen(body, headers, settings):
        raise KeyError("something")

    monkeypatch.setattr(service_module, "parse", unforeseen)
    reply = service_module.Service(engine).parse(b"{}", {})
    assert reply.status == 400 and reply.body["error"] == "the request could not be read: KeyError"


def test_a_step_that_fails_midway_gives_each_adapter_slot_back_once(engine, monkeypatch):
    """Row 0 finishes (its slot given back) before row 1's failure fails the step: the failure must not give row 0's
    slot back a second time (a negative count would let a running adapter be evicted)."""
    from loraops_serving.schema import RequestError
    from loraops_serving.sequence import Row, Sequence

    scheduler = engine.scheduler
    assert scheduler.wait_for(scheduler.idle, 60)
    advance = Sequence.advance

    def fail_row_1(self, *args, **kwargs):
        if self.index == 1:
            raise RuntimeError("planted failure while detokenizing")
        return advance(self, *args, **kwargs)

    monkeypatch.setattr(Sequence, "advance", fail_row_1)
    with pytest.raises(RequestError):
        engine.generate([Row(PROMPT, "alpha", 1), Row(PROMPT, "alpha", 5)])
    monkeypatch.undo()
    assert scheduler.wait_for(scheduler.idle, 60)
    assert engine.in_use["alpha"] == 0
    assert engine.generate([Row(PROMPT, "alpha", 2)])[0].tokens == 2


def test_asking_for_the_scheduler_never_waits_for_a_forward(engine):
    """The front asks for the scheduler on every request, from its event loop; the worker holds the engine's lock
    for a whole forward (a GPU step), so asking must not take that lock once the scheduler exists."""
    assert engine.scheduler is not None
    holding, release, answered = threading.Event(), threading.Event(), threading.Event()

    def forward_in_progress():
        with engine.lock:
            holding.set()
            release.wait(120)

    def ask():
        assert engine.scheduler is not None
        answered.set()

    worker = threading.Thread(target=forward_in_progress)
    worker.start()
    try:
        assert holding.wait(60)
        threading.Thread(target=ask, daemon=True).start()
        assert answered.wait(60), "asking for the scheduler waited for the engine's lock"
    finally:
        release.set()
        worker.join()
