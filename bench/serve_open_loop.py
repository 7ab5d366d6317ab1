"""The serving bench's open loop (``serve_throughput.py`` 2.): Poisson arrivals through the product's scheduler."""

from __future__ import annotations

import random
import time
from pathlib import Path

from serve_setup import open_texts, percentile


def scheduled_open_loop(args, base: Path, adapters: list[Path], tokenizer) -> list[dict]:
    """The open loop through the product: Poisson arrivals submitted to the engine's :class:`Scheduler` (its own
    admission, prefill and continuous batching over the graph backend), greedy, each request's adapter drawn
    among the 8. Token times are those of the scheduler's ``token`` events (a piece the detokenizer holds back, a
    partial character, arrives with the next one); tokens counted are those the requests produced."""

    from loraops_serving.engine import Engine, Row
    from loraops_serving.settings import ServingSettings

    settings = ServingSettings(
        max_batch_size=args.open_batch,
        max_resident_adapters=8,
        max_new_tokens=256,
        max_total_tokens=1024,
        allow_unverified_adapters=True,
    )
    engine = Engine(base, settings, adapters)
    names = [folder.name for folder in adapters]
    requests = open_texts(tokenizer, args.open_requests, 0, 384, 256)
    engine.generate([Row(requests[0][0], names[k], 4) for k in range(8)])  # adapters resident
    if hasattr(engine.backend, "warm_up"):  # a warmed server: every decode graph captured before the load
        print(f"captured {engine.backend.warm_up(every_bucket=True)} graphs (decode and prefill)", flush=True)
    out = []
    for rate in args.rates:
        rng = random.Random(int(rate * 1000))
        arrivals, t = [], 0.0
        for _ in requests:
            t += rng.expovariate(rate) if rate > 0 else 0.0
            arrivals.append(t)
        chosen = [names[rng.randrange(8)] for _ in requests]
        stamps: list[list[float]] = [[] for _ in requests]
        tickets = []
        steps_before = engine.scheduler.steps
        t0 = time.perf_counter()
        for k, ((prompt, new), adapter) in enumerate(zip(requests, chosen)):
            delay = arrivals[k] - (time.perf_counter() - t0)
            if delay > 0:
                time.sleep(delay)

            def sink(kind, payload, times=stamps[k]) -> None:
                if kind == "token":
                    times.append(time.perf_counter())

            tickets.append(engine.scheduler.submit([Row(prompt, adapter, new)], sink))
        outcomes = [ticket.wait(600) for ticket in tickets]
        elapsed = time.perf_counter() - t0
        failed = [o for o in outcomes if not isinstance(o, list)]
        generated = sum(g.tokens for o in outcomes if isinstance(o, list) for g in o)
        ttft = [times[0] - t0 - arrivals[k] for k, times in enumerate(stamps) if times]
        gaps = [b - a for times in stamps for a, b in zip(times, times[1:])]
        row = {
            "rate_per_s": rate if rate > 0 else "all at once",
            "requests": len(requests),
            "failed": len(failed),
            "tokens_per_s": generated / elapsed,
            "ttft_p50_ms": 1000 * percentile(ttft, 0.5),
            "ttft_p95_ms": 1000 * percentile(ttft, 0.95),
            "itl_p50_ms": 1000 * percentile(gaps, 0.5),
            "itl_p95_ms": 1000 * percentile(gaps, 0.95),
            "decode_steps": engine.scheduler.steps - steps_before,
            "seconds": elapsed,
            "max_batch": args.open_batch,
        }
        out.append(row)
        print(row, flush=True)
    engine.scheduler.shutdown()
    return out
