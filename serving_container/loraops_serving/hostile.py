"""A hostile-input run against a front: malformed, oversized, deeply nested, invalid Unicode, wrong types, unknown
fields and adapters, and dropped streams, from a few threads at once, with ``/ping`` checked throughout.

``python -m loraops_serving.hostile --url http://127.0.0.1:8080 --requests 320`` prints the counts as JSON. Every
hostile request must get a 4xx; dropped streams (a valid stream the client abandons after its first line) are
counted apart. Bounded: every call has a timeout, and the run sends a fixed number of requests.
"""

from __future__ import annotations

import argparse
import http.client
import json
import threading
import urllib.parse
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

PROMPT = "### Instruction:\nSay hello.\n\n### Response:\n"


@dataclass(frozen=True)
class Case:
    kind: str
    body: bytes = b""
    claimed_length: int | None = None  # send this Content-Length but only ``body`` (a huge upload, cut short)
    drop_stream: bool = False


def _json(value: object) -> bytes:
    return json.dumps(value).encode()


def cases(limit_bytes: int = 1_048_576) -> list[Case]:
    """One of each hostile shape; :func:`run` cycles through them."""
    ok = {"inputs": PROMPT, "parameters": {"max_new_tokens": 4}}
    wrong_types = [
        {"inputs": 5},
        {"inputs": []},
        {"inputs": [1, 2]},
        {"inputs": {"a": 1}},
        {"inputs": ""},
        {"inputs": PROMPT, "parameters": "fast"},
        {"inputs": PROMPT, "parameters": {"max_new_tokens": "5"}},
        {"inputs": PROMPT, "parameters": {"max_new_tokens": -1}},
        {"inputs": PROMPT, "parameters": {"max_new_tokens": True}},
        {"inputs": PROMPT, "parameters": {"max_new_tokens": 10**9}},
        {"inputs": PROMPT, "parameters": {"temperature": "hot"}},
        {"inputs": PROMPT, "parameters": {"top_p": 2}},
        {"inputs": PROMPT, "parameters": {"seed": -3}},
        {"inputs": PROMPT, "parameters": {"stop": 5}},
        {"inputs": PROMPT, "parameters": {"stop": [""]}},
        {"inputs": PROMPT, "parameters": {"do_sample": "yes"}},
        {"inputs": PROMPT, "stream": "yes"},
        {"inputs": [PROMPT, PROMPT], "stream": True},
        {"inputs": PROMPT, "adapter": 5},
        {"inputs": PROMPT, "adapter": ""},
        {"inputs": PROMPT, "adapters": [1]},
        {"inputs": [PROMPT, PROMPT], "adapters": ["a"]},
        {"inputs": [PROMPT] * 100},
        {"inputs": "x" * 20_000},
        {"inputs": "word " * 3000},
        {"inputs": PROMPT, "prompt": "other"},
        {"inputs": PROMPT, "parameters": {"beams": 4}},
    ]
    return [
        Case("malformed", b"{"),
        Case("malformed", b'{"inputs": }'),
        Case("malformed", b"\x00\x01\x02garbage"),
        Case("malformed", b""),
        Case("malformed", b"[1, 2, 3]"),
        Case("malformed", b'"just a string"'),
        Case("nested", b"[" * 200_000 + b"]" * 200_000),
        Case("nested", b'{"inputs": ' + b'{"a": ' * 50_000 + b"1" + b"}" * 50_000 + b"}"),
        Case("unicode", b'{"inputs": "\\ud800"}'),
        Case("unicode", b'{"inputs": ["ok", "\\udfff tail"]}'),
        Case("unicode", b'{"\\ud800": 1}'),
        Case("unicode", b'{"inputs": "Hi", "adapter": "\\udc00"}'),
        Case("unicode", b'{"inputs": "\xc3\x28"}'),
        Case("oversized", _json({"inputs": "x" * (limit_bytes + 10)})),
        Case("oversized", b'{"inputs": "', claimed_length=100 * 1024 * 1024),
        *[Case("wrong-type", _json(body)) for body in wrong_types],
        Case("unknown-adapter", _json({**ok, "adapter": "no-such-adapter"})),
        Case("unknown-adapter", _json({**ok, "adapters": "../../etc/passwd"})),
        Case("dropped-stream", _json({**ok, "parameters": {"max_new_tokens": 200}, "stream": True}), drop_stream=True),
    ]


def send(url: str, case: Case, timeout: float = 60) -> int | str:
    """The status the front answered (``"dropped"`` for a stream the client abandoned after its first line)."""
    where = urllib.parse.urlsplit(url)
    connection = http.client.HTTPConnection(where.hostname, where.port, timeout=timeout)
    try:
        connection.putrequest("POST", "/invocations")
        connection.putheader("Content-Type", "application/json")
        length = case.claimed_length if case.claimed_length is not None else len(case.body)
        connection.putheader("Content-Length", str(length))
        connection.endheaders()
        try:
            connection.send(case.body)
        except OSError:  # the server refused before reading it all: its answer is still there
            pass
        response = connection.getresponse()
        if case.drop_stream:
            response.readline()
            return "dropped" if response.status == 200 else response.status
        response.read()
        return response.status
    finally:
        connection.close()


def ping(url: str) -> int:
    where = urllib.parse.urlsplit(url)
    connection = http.client.HTTPConnection(where.hostname, where.port, timeout=60)
    try:
        connection.request("GET", "/ping")
        response = connection.getresponse()
        response.read()
        return response.status
    finally:
        connection.close()


def run(url: str, requests: int = 320, threads: int = 4, limit_bytes: int = 1_048_576) -> dict:
    """``requests`` hostile calls cycling through :func:`cases`, ``/ping`` after every 20; the counts."""
    shapes = cases(limit_bytes)
    plan = [shapes[i % len(shapes)] for i in range(requests)]
    statuses: Counter = Counter()
    kinds: Counter = Counter()
    pings: Counter = Counter()
    counting = threading.Lock()  # Counter's += is a read and a write: threads would lose counts

    def one(i: int) -> None:
        case = plan[i]
        status = send(url, case)
        pinged = ping(url) if i % 20 == 0 else None
        with counting:
            statuses[status] += 1
            kinds[(case.kind, status)] += 1
            if pinged is not None:
                pings[pinged] += 1

    with ThreadPoolExecutor(threads) as pool:
        list(pool.map(one, range(requests)))
    pings[ping(url)] += 1
    return {
        "requests": requests,
        "statuses": {str(k): v for k, v in sorted(statuses.items(), key=str)},
        "by_kind": {f"{k} {s}": v for (k, s), v in sorted(kinds.items(), key=str)},
        "pings": {str(k): v for k, v in pings.items()},
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m loraops_serving.hostile", description=__doc__)
    parser.add_argument("--url", required=True)
    parser.add_argument("--requests", type=int, default=320)
    parser.add_argument("--threads", type=int, default=4)
    parser.add_argument("--limit-bytes", type=int, default=1_048_576, help="the front's max_body_bytes")
    args = parser.parse_args(argv)
    counts = run(args.url, args.requests, args.threads, args.limit_bytes)
    print(json.dumps(counts, indent=2))
    hostile_ok = all(s == "dropped" or 400 <= int(s) < 500 for s in counts["statuses"])
    return 0 if hostile_ok and set(counts["pings"]) == {"200"} else 1


if __name__ == "__main__":
    raise SystemExit(main())
