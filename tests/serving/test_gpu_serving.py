"""On a CUDA GPU, the served path: the engine picks the graph backend (CUDA graphs over the static cache) and its
scheduler runs requests of mixed adapters that join and leave the running batch, with adapters loaded after the
first capture; greedy answers equal the eager engine's (float32), a seeded sampled request answers the same alone
and batched, and every cache row is free again afterwards."""

from __future__ import annotations

import pytest
import torch

from loraops_serving.backends import EagerBackend, GraphBackend
from loraops_serving.engine import Engine
from loraops_serving.ops import triton_available
from loraops_serving.settings import ServingSettings
from tests.serving.scheduler_helpers import run_scenario, seeded_alone

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available() or not triton_available(), reason="needs CUDA and Triton"),
]


@pytest.fixture(scope="module")
def engines(tiny_base, adapters):
    limits = {"max_resident_adapters": 2, "max_batch_size": 4, "max_inputs": 4, "dtype": "float32"}
    graph = Engine(tiny_base, ServingSettings(**limits, max_total_tokens=64), list(adapters.values()))
    eager = Engine(tiny_base, ServingSettings(**limits, decode_backend="eager"), list(adapters.values()))
    return graph, eager


def test_the_served_path_on_cuda_is_the_graph_step_and_answers_as_the_eager_engine(engines):
    graph, eager = engines
    assert isinstance(graph.backend, GraphBackend) and graph.backend.decoder.graphs_on  # chosen by "auto"
    assert isinstance(eager.backend, EagerBackend) and graph.device == "cuda"
    assert graph.backend.decoder.captured and graph.routing.version == 0  # warmed up before any adapter layer
    texts, steps = run_scenario(graph)
    assert texts == run_scenario(eager)[0]
    assert len(set(texts[:3])) == 3  # three prompts, three adapters: the comparison means something
    decoder = graph.backend.decoder
    assert decoder.captured_version == graph.routing.version > 0  # recaptured for the adapter layers loaded later
    assert {lora for _, _, lora in decoder.captured} == {False, True}  # steps with and without adapters
    assert steps[0] == [0, 1, 2] and [0, 1, 2, 3] == sorted(steps[4])  # the later requests joined in free rows
    assert graph.scheduler.wait_for(graph.scheduler.idle, 60)
    assert graph.backend.pool.free == {0, 1, 2, 3} and sum(graph.in_use.values()) == 0
    assert texts[-1] == seeded_alone(graph)  # the seeded row batched with four others, and alone
