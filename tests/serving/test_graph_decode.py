"""The fast decode path on the CPU (eager; CUDA graphs and the Triton kernels are the GPU tests' job): the
all-slots stacked LoRA product equals the reference gather, and the static-cache step, with requests joining and
leaving a running batch of mixed adapters, produces peft's greedy tokens for every request."""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys

import pytest
import torch

from loraops_serving.graph_decode import GraphDecoder
from loraops_serving.multi_lora import FusedGroup, MultiLoRALinear, Routing, reference_delta, stacked_delta
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


@pytest.mark.parametrize(
    ("grouped", "bucketed"), [(False, False), (True, False), (True, True)], ids=["per-layer", "fused", "bucketed"]
)
def test_continuous_batch_of_mixed_adapters_matches_peft(tiny_base, adapters, served, grouped, bucketed):
    """Also with the fused groups, and with the prompts admitted in a step packed into one sequence in the static
    buffers, right-padded to its length bucket (what CUDA captures as one graph per bucket)."""
    model, routing, _, slots = served
    prompts = _prompt_ids(tiny_base)
    decoder = GraphDecoder(
        model, routing, max_batch=4, max_len=64, window_first=16, grouped=grouped, bucketed_prefill=bucketed
    )
    assert (decoder.groups is not None) == grouped and decoder.bucketed_prefill == bucketed
    assert any(len(p) not in decoder.prefill_buckets for p in prompts)  # some prompts are padded
    # (join step, prompt, slot, new tokens): the second joins while the first runs, the first leaves before the
    # third joins and takes its row back; rows run at different positions with different adapters
    plan = [(0, prompts[0], slots["alpha"], 9), (2, prompts[1], slots["beta"], 12), (12, prompts[2], slots[None], 6)]
    plan.append((3, prompts[2], slots["alpha"], 5))
    plan.append((2, prompts[2], slots[None], 3))  # two join in one step: one packed prefill, base and adapter mixed
    got = run_requests(decoder, plan)
    names = {v: k for k, v in slots.items()}
    for k, (_, prompt, slot, new) in enumerate(plan):
        assert got[k] == peft_greedy(tiny_base, adapters, prompt, names[slot], new, "cpu"), f"request {k}"


@pytest.mark.parametrize("grouped", [False, True], ids=["per-layer", "fused"])
def test_packed_prefill_equals_each_prompt_alone(tiny_base, served, grouped):
    """Prompts of mixed adapters packed end to end (cut into two packs here: the static buffers hold ``max_len``
    tokens) give each prompt the logits and cache row it gets prefilled alone; nothing lands in other rows."""
    model, routing, _, slots = served
    prompts = _prompt_ids(tiny_base)
    lengths = [len(p) for p in prompts]
    mine = [slots["alpha"], slots[None], slots["beta"]]

    def decoder() -> GraphDecoder:
        max_len = sum(lengths) - 1
        return GraphDecoder(model, routing, max_batch=4, max_len=max_len, grouped=grouped, bucketed_prefill=True)

    packed = decoder()
    assert len(packed._packs(lengths)) == 2
    together = packed.prefill([2, 0, 1], prompts, mine)
    alone = decoder()
    for row, prompt, slot, logits in zip([2, 0, 1], prompts, mine, together):
        torch.testing.assert_close(logits, alone.prefill([row], [prompt], [slot])[0], rtol=1e-5, atol=1e-5)
        for cache, reference in ((packed.keys, alone.keys), (packed.values, alone.values)):
            torch.testing.assert_close(cache[:, row, :, : len(prompt)], reference[:, row, :, : len(prompt)])
            assert cache[:, row, :, len(prompt) :].abs().max() == 0  # no padding in a prompt's row
    assert packed.keys[:, 3].abs().max() == 0  # an unused row stays untouched


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


def _group_case(seed: int):
    """q/k/v-like layers (the middle one not adapted) with adapters of ranks 3 and 5 in slots 1 and 2."""
    generator = torch.Generator().manual_seed(seed)
    routing, fan_in = Routing(), 24
    layers = [torch.nn.Linear(fan_in, n, bias=n == 16) for n in (40, 16, 16)]
    members = [MultiLoRALinear(layers[0], 3, 3, routing), layers[1], MultiLoRALinear(layers[2], 3, 3, routing)]
    for member in (members[0], members[2]):
        for slot, rank in ((1, 3), (2, 5)):
            a = torch.randn(rank, fan_in, generator=generator)
            b = torch.randn(member.base.out_features, rank, generator=generator)
            member.put(slot, a, b, 0.5 * slot)
    return members, torch.randn(6, fan_in, generator=generator), torch.tensor([2, 0, 1, 2, 1, 0])


def _per_layer(members, x, rows):
    routing = members[0].routing
    routing.rows, routing.active = rows, True
    try:
        with torch.no_grad():
            return [m(x) for m in members]
    finally:
        routing.rows, routing.active = None, False


def test_fused_group_equals_its_layers_and_shares_their_tensors():
    members, x, rows = _group_case(0)
    expect = _per_layer(members, x, rows)
    group = FusedGroup(members)
    assert members[0].rank == members[2].rank == 5  # grown to the group's rank
    with torch.no_grad():
        got = group(x, rows, kernel=False)
        plain = group(x, None, kernel=False)
    for mine, theirs in zip(got, expect):
        torch.testing.assert_close(mine, theirs)
    for mine, layer in zip(plain, [members[0].base, members[1], members[2].base]):
        torch.testing.assert_close(mine, layer(x).detach())
    # the layers' tensors are views of the group's: an adapter loaded into a slot afterwards reaches the group
    members[2].put(1, torch.ones(2, x.shape[1]), torch.ones(16, 2), 2.0)
    with torch.no_grad():
        torch.testing.assert_close(group(x, rows, kernel=False)[2], _per_layer(members, x, rows)[2])
        assert not torch.allclose(group(x, rows, kernel=False)[2], got[2])


INTERPRETED = """
import torch
from loraops_serving.ops import sgmv

generator = torch.Generator().manual_seed(3)
for slots, rank, starts, batch in [(4, 8, [0, 40, 56, 72], 5), (3, 4, [0, 24], 17), (5, 16, [0, 64, 160], 3)]:
    members, total = len(starts) - 1, starts[-1]
    xa = torch.randn(batch, slots * members * rank, generator=generator)
    lora_b = torch.randn(slots, total, rank, generator=generator)
    scale = torch.rand(members, slots, generator=generator)
    rows = torch.randint(0, slots, (batch,), generator=generator)
    rows[0] = 0
    out = torch.randn(batch, 2 * total, generator=generator)[:, :total]  # rows of a wider tensor, as served
    expect = sgmv.add_lora_grouped_reference(out.clone(), xa, lora_b, scale, rows, starts)
    got = sgmv.add_lora_grouped(out.clone(), xa, lora_b, scale, rows, starts)
    torch.testing.assert_close(got, expect)
    assert torch.equal(got[0], out[0])  # a slot-0 row is left alone
print("interpreted ok")
"""


def test_triton_grouped_expand_in_interpreter_mode():
    """The Triton kernel's logic on the CPU, in a process started with ``TRITON_INTERPRET=1`` (read when Triton is
    first imported); skipped where Triton is not installed, as in CI: the GPU tests run it compiled."""
    if importlib.util.find_spec("triton") is None:
        pytest.skip("Triton is not installed")
    env = {**os.environ, "TRITON_INTERPRET": "1"}
    done = subprocess.run([sys.executable, "-c", INTERPRETED], env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0 and "interpreted ok" in done.stdout, done.stderr[-3000:]
