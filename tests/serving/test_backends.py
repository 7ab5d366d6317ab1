"""The scheduler over the graph backend (``GraphDecoder``'s static cache; on the CPU its step runs eagerly): the
same answers as the eager backend for requests of mixed adapters joining and leaving, a joining request takes
the lowest free cache row, a leaving or cancelled one frees its row at once, a request longer than the cache is a
400 that changes nothing, and the backend is chosen as configured."""

from __future__ import annotations

import pytest
import torch

from loraops_serving.backends import EagerBackend, GraphBackend, graph_or_eager, make_backend
from loraops_serving.engine import Engine, Row
from loraops_serving.schema import BadRequest
from loraops_serving.settings import ServingSettings
from tests.serving.scheduler_helpers import PROMPTS, run_scenario, seeded_alone


@pytest.fixture(scope="module")
def graph_engine(tiny_base, adapters):
    settings = ServingSettings(
        max_resident_adapters=2, max_batch_size=4, max_inputs=4, decode_backend="graph", max_total_tokens=64
    )
    return Engine(tiny_base, settings, list(adapters.values()))


def test_graph_backend_through_the_scheduler_answers_as_the_eager_one(graph_engine, tiny_base, adapters):
    settings = ServingSettings(max_resident_adapters=2, decode_backend="eager")
    engine = Engine(tiny_base, settings, list(adapters.values()))
    assert isinstance(graph_engine.backend, GraphBackend) and isinstance(engine.backend, EagerBackend)
    texts, steps = run_scenario(graph_engine)
    eager_texts, _ = run_scenario(engine)
    assert texts == eager_texts
    assert len(set(texts[:3])) == 3  # three prompts, three adapters: the comparison means something
    assert texts[-1] == seeded_alone(graph_engine) == seeded_alone(engine)  # seeded: the same alone and batched
    # FIRST takes rows 0-2; its first row leaves after 3 tokens (2 steps), so the later requests take rows 0 and 3
    assert steps[0] == [0, 1, 2] and steps[2] == [1, 2]
    assert steps[4] == [1, 2, 0, 3]
    assert graph_engine.backend.pool.free == {0, 1, 2, 3}  # every row back once all have left
    assert sum(graph_engine.in_use.values()) == 0


def test_a_cancelled_request_frees_its_row_at_the_next_step(graph_engine):
    scheduler, real, seen = graph_engine.scheduler, graph_engine.decode_step, []
    assert scheduler.wait_for(scheduler.idle, 60)
    tickets = []

    def observed(batch, tokens):
        seen.append((list(batch.rows), set(graph_engine.backend.pool.free)))
        if len(seen) == 2:
            tickets[0].cancel()  # the client left
        return real(batch, tokens)

    graph_engine.decode_step = observed
    try:
        tickets.append(scheduler.submit([Row(PROMPTS[0], "alpha", 20)]))
        tickets.append(scheduler.submit([Row(PROMPTS[1], None, 6)]))
        assert tickets[0].wait(120).status == 499
        assert isinstance(tickets[1].wait(120), list)
    finally:
        del graph_engine.decode_step
    rows = seen[1][0]
    assert 0 in rows and len(rows) == 2  # both running when the first is cancelled, which holds row 0
    assert seen[2][0] == [r for r in rows if r != 0] and 0 in seen[2][1]  # next step: gone, its row free
    assert scheduler.wait_for(scheduler.idle, 60) and graph_engine.backend.pool.free == {0, 1, 2, 3}


def test_a_request_longer_than_the_static_cache_is_a_400_that_changes_nothing(graph_engine):
    prompt_tokens = len(graph_engine.tokenizer(PROMPTS[0])["input_ids"])
    with pytest.raises(BadRequest, match="64 tokens a request may hold in the static KV cache") as refused:
        graph_engine.generate([Row(PROMPTS[0], "alpha", 64 - prompt_tokens + 1)])
    assert refused.value.status == 400
    assert graph_engine.generate([Row(PROMPTS[0], "alpha", 64 - prompt_tokens)])[0].tokens >= 1  # fits exactly
    assert graph_engine.backend.pool.free == {0, 1, 2, 3} and sum(graph_engine.in_use.values()) == 0


def test_the_backend_is_chosen_as_configured(tiny_base, engine):
    from transformers import AutoModelForCausalLM

    from loraops_serving.multi_lora import Routing

    model = AutoModelForCausalLM.from_pretrained(tiny_base, dtype=torch.float32).eval()
    lock = engine.lock
    assert isinstance(make_backend("auto", model, Routing(), lock, 0, 2, 32), EagerBackend)  # the CPU: eager
    graph = make_backend("graph", model, Routing(), lock, 0, 3, 32)
    assert isinstance(graph, GraphBackend) and graph.max_len == 32 and graph.decoder.max_batch == 3
    assert not graph.decoder.graphs_on  # CUDA graphs only on CUDA
    with pytest.raises(ValueError, match="none of"):
        make_backend("fast", model, Routing(), lock, 0, 2, 32)
    with pytest.raises(ValueError, match="none of"):
        ServingSettings.from_environment({"LORAOPS_DECODE_BACKEND": "fast"})
    model.config.model_type = "gpt2"  # a model the graph step does not implement
    with pytest.raises(ValueError, match="graph decode supports"):
        make_backend("graph", model, Routing(), lock, 0, 2, 32)
    # "auto" on CUDA: such a model, or a cache that does not fit, is served by the eager backend instead
    eager = make_backend("eager", model, Routing(), lock, 0, 2, 32)
    assert graph_or_eager(lambda: GraphBackend(model, Routing(), lock, 2, 32), eager, strict=False) is eager

    def too_big():
        raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 18.00 GiB")

    assert graph_or_eager(too_big, eager, strict=False) is eager
    with pytest.raises(torch.OutOfMemoryError):
        graph_or_eager(too_big, eager, strict=True)


def test_the_engine_sizes_the_cache_for_its_largest_request(tiny_base):
    settings = ServingSettings(max_batch_size=2, max_inputs=5, decode_backend="graph", max_total_tokens=10_000)
    graph = Engine(tiny_base, settings).backend
    assert graph.decoder.max_batch == 5  # one request of max_inputs rows runs even when it outnumbers the batch
    assert graph.max_len == Engine(tiny_base, ServingSettings()).context  # never past the model's context


def test_a_burst_of_arrivals_is_prefilled_over_several_steps(graph_engine, monkeypatch):
    """Requests that arrive together are prefilled at most ``max_prefill_tokens`` prompt tokens a step (the first
    always), so the running rows are not held for one long prefill; all of them still finish."""
    from loraops_serving.scheduler import Scheduler, Ticket

    scheduler = graph_engine.scheduler
    assert scheduler.wait_for(scheduler.idle, 60)
    real, prefills = graph_engine.prefill, []

    def observed(seqs):
        prefills.append(len(seqs))
        return real(seqs)

    monkeypatch.setattr(graph_engine, "prefill", observed)
    monkeypatch.setattr(Scheduler, "max_prefill_tokens", 2 * len(graph_engine.encode(Row(PROMPTS[1], None, 4))))
    tickets = [Ticket([Row(PROMPTS[k % 3], ("alpha", None, "beta")[k % 3], 6)]) for k in range(4)]
    with scheduler.cond:  # all four queued before the worker looks: one admission decision over all of them
        scheduler.waiting.extend(tickets)
        scheduler.cond.notify_all()
    outcomes = [ticket.wait(300) for ticket in tickets]
    assert all(isinstance(o, list) and o[0].tokens == 6 for o in outcomes), outcomes
    assert prefills == [2, 2]  # two prompts fit the budget each step, not four at once
    assert scheduler.wait_for(scheduler.idle, 60) and sum(graph_engine.in_use.values()) == 0
