"""The fast decode path on the CPU (eager; CUDA graphs and the Triton kernels are the GPU tests' job): the
all-slots stacked LoRA product equals the reference gather, and the static-cache step, with requests joining and
leaving a running batch of mixed adapters, produces peft's greedy tokens for every request."""

from __future__ import annotations

import pytest
import torch

from loraops_serving.graph_decode import GraphDecoder
from loraops_serving.multi_lora import Routing, reference_delta, stacked_delta
from tests.serving.fast_decode_helpers import load_with_adapters, peft_greedy, run_requests

PROMPTS = ["What is a llama?", "Name three rivers in Europe and say which is longest.", "Why is the sky blue?"]


def test_stacked_delta_equals_the_reference_gather():
    generator = torch.Generator().manual_seed(0)
    slots, rank, fan_in, fan_out = 4, 8, 24, 40
    lora_a = torch.randn(slots, rank, fan_in, generator=generator, dtype=torch.float64)
    lora_b = torch.randn(slots, fan_out, rank, generator=generator, dtype=torch.float64)
    scale = torch.rand(slots, generator=generator, dtype=torch.float64)
    lora_a[0], lora_b[0], scale[0] = 0, 0, 0
    x = torch.randn(5, 7, fan_in, generator=generator, dtype=torch.float64)
    rows = torch.tensor([3, 0, 1, 3, 2])
    ours = stacked_delta(x, rows, lora_a, lora_b, scale)
    torch.testing.assert_close(ours, reference_delta(x, rows, lora_a, lora_b, scale))
    assert ours[1].abs().max() == 0  # slot 0: the base alone


@pytest.fixture(scope="module")
def served(tiny_base, adapters):
    return load_with_adapters(tiny_base, adapters, "cpu")


def _prompt_ids(tiny_base) -> list[list[int]]:
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(tiny_base)
    return [tokenizer(p)["input_ids"] for p in PROMPTS]


def test_continuous_batch_of_mixed_adapters_matches_peft(tiny_base, adapters, served):
    model, routing, _, slots = served
    prompts = _prompt_ids(tiny_base)
    decoder = GraphDecoder(model, routing, max_batch=4, max_len=64, window_first=16)
    # (join step, prompt, slot, new tokens): the second joins while the first runs, the first leaves before the
    # third joins and takes its row back; rows run at different positions with different adapters
    plan = [(0, prompts[0], slots["alpha"], 9), (2, prompts[1], slots["beta"], 12), (12, prompts[2], slots[None], 6)]
    plan.append((3, prompts[2], slots["alpha"], 5))
    got = run_requests(decoder, plan)
    names = {v: k for k, v in slots.items()}
    for k, (_, prompt, slot, new) in enumerate(plan):
        assert got[k] == peft_greedy(tiny_base, adapters, prompt, names[slot], new, "cpu"), f"request {k}"


def test_idle_rows_write_only_the_scratch_row(tiny_base, served):
    model, routing, _, slots = served
    decoder = GraphDecoder(model, routing, max_batch=3, max_len=32, window_first=16)
    prompt = _prompt_ids(tiny_base)[0]
    decoder.prefill([0, 1], [prompt, prompt], [slots["alpha"], 0])
    keys, values = decoder.keys[:, :3].clone(), decoder.values[:, :3].clone()
    decoder.decode([5, 7], [len(prompt), -1], [slots["alpha"], slots["beta"]])  # row 1 idle, row 2 padding
    assert torch.equal(decoder.keys[:, 1:3], keys[:, 1:3]) and torch.equal(decoder.values[:, 1:3], values[:, 1:3])
    assert not torch.equal(decoder.keys[:, 0], keys[:, 0])  # the running row did write


def test_bad_input_is_refused(tiny_base, served):
    model, routing, _, _ = served
    decoder = GraphDecoder(model, routing, max_batch=2, max_len=16)
    with pytest.raises(ValueError, match="distinct"):
        decoder.prefill([0, 0], [[1, 2], [1, 2]], [0, 0])
    with pytest.raises(ValueError, match="prompt lengths"):
        decoder.prefill([0], [list(range(1, 17))], [0])
    with pytest.raises(ValueError, match="past the cache"):
        decoder.decode([1], [16], [0])
    with pytest.raises(ValueError, match="1..2 rows"):
        decoder.decode([1, 2, 3], [0, 0, 0], [0, 0, 0])
    model.config.model_type = "gpt2"
    try:
        with pytest.raises(ValueError, match="supports"):
            GraphDecoder(model, Routing())
    finally:
        model.config.model_type = "llama"
