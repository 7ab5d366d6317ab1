"""Shared by the CPU and GPU tests of the scheduler's backends: requests of mixed adapters that join a running
batch and leave it at different steps, driven through the engine's real scheduler, with what each step ran."""

from __future__ import annotations

from loraops_serving.engine import Engine, Row
from loraops_serving.schema import Sampling

PROMPTS = [
    "### Instruction:\nWhat is a llama?\n\n### Response:\n",
    "### Instruction:\nName three rivers in Europe.\n\n### Response:\n",
    "### Instruction:\nWhy is the sky blue?\n\n### Response:\n",
]
SEEDED = Row(PROMPTS[0], "beta", 8, (), Sampling(do_sample=True, temperature=1.5, top_k=50, seed=7))
FIRST = [Row(PROMPTS[0], "alpha", 3), Row(PROMPTS[1], None, 14), Row(PROMPTS[2], "beta", 11)]
LATER = [Row(PROMPTS[2], "alpha", 6), SEEDED]


def run_scenario(engine: Engine, join_at: int = 4) -> tuple[list[str], list[list[int] | None]]:
    """``FIRST`` as one request (its rows leave after 3, 11 and 14 tokens); at decode step ``join_at`` each row
    of ``LATER`` arrives as a request of its own (joining the running batch at the next step boundary). Returns
    every row's text (``FIRST`` then ``LATER``) and, per decode step, the cache rows it ran (``None`` on a
    backend without cache rows). The waits are generous: the first CUDA forwards compile."""
    scheduler, real = engine.scheduler, engine.decode_step
    assert scheduler.wait_for(scheduler.idle, 60)
    steps: list[list[int] | None] = []
    later = []

    def observed(batch, tokens):
        steps.append(list(batch.rows) if hasattr(batch, "rows") else None)
        if len(steps) == join_at:
            later.extend(scheduler.submit([row]) for row in LATER)  # queued now: admitted before the next step
        return real(batch, tokens)

    engine.decode_step = observed
    try:
        first = scheduler.submit(FIRST)
        outcomes = [first.wait(300)]
        assert scheduler.wait_for(lambda: len(later) == len(LATER), 300), "the later requests were never sent"
        outcomes += [ticket.wait(300) for ticket in later]
    finally:
        del engine.decode_step
    texts = []
    for outcome in outcomes:
        assert isinstance(outcome, list), outcome
        texts += [g.text for g in outcome]
    return texts, steps


def seeded_alone(engine: Engine) -> str:
    return engine.generate([SEEDED])[0].text
