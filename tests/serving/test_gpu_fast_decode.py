"""On a CUDA GPU: the Triton BGMV kernels against a float64 reference (and that they copy no adapter), the adapted
layers' CUDA path against peft, and the CUDA-graph decode step, with requests joining and leaving a batch of mixed
adapters and an adapter of new layers arriving after capture, against peft's greedy tokens."""

from __future__ import annotations

import pytest
import torch

from loraops_serving.graph_decode import GraphDecoder
from loraops_serving.layouts import base_digest, read_adapter
from loraops_serving.multi_lora import attach_adapter
from loraops_serving.ops import add_lora_bgmv, triton_available
from tests.serving.fast_decode_helpers import load_with_adapters, peft_greedy, run_requests

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available() or not triton_available(), reason="needs CUDA and Triton"),
]
PROMPTS = ["What is a llama?", "Name three rivers in Europe and say which is longest.", "Why is the sky blue?"]


SHAPES = [(9, 64, 4096, 4096, 16), (9, 64, 11008, 4096, 1), (3, 8, 520, 300, 33), (5, 16, 4096, 11008, 5)]


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32])
@pytest.mark.parametrize(("slots", "rank", "fan_in", "fan_out", "batch"), SHAPES)
def test_bgmv_matches_float64_and_copies_no_adapter(dtype, slots, rank, fan_in, fan_out, batch):
    generator = torch.Generator(device="cuda").manual_seed(batch * rank)

    def rand(*shape, scale=1.0):
        return (torch.randn(*shape, device="cuda", generator=generator) * scale).to(dtype)

    lora_a, lora_b = rand(slots, rank, fan_in, scale=fan_in**-0.5), rand(slots, fan_out, rank, scale=rank**-0.5)
    lora_a[0], lora_b[0] = 0, 0
    scale = torch.rand(slots, device="cuda", generator=generator).to(dtype) + 0.5
    x, base = rand(batch, fan_in), rand(batch, fan_out)
    rows = torch.randint(0, slots, (batch,), device="cuda", generator=generator)
    rows[0] = 0
    if batch > 1:
        rows[1] = slots - 1
    expect = base.double() + scale.double()[rows, None] * torch.einsum(
        "mnr,mrk,mk->mn", lora_b.double()[rows], lora_a.double()[rows], x.double()
    )
    out = base.clone()
    add_lora_bgmv(out, x, lora_a, lora_b, scale, rows)  # compile before measuring memory
    out = base.clone()
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    before = torch.cuda.memory_allocated()
    add_lora_bgmv(out, x, lora_a, lora_b, scale, rows)
    torch.cuda.synchronize()
    extra = torch.cuda.max_memory_allocated() - before
    assert extra < rank * fan_in * lora_a.element_size()  # less than one row's A: nothing gathered
    error = ((out.double() - expect).norm() / expect.norm()).item()
    assert error < (1e-2 if dtype == torch.bfloat16 else 1e-5), error
    assert torch.equal(out[rows == 0], base[rows == 0])  # slot 0 rows untouched


def _ids(tiny_base) -> list[list[int]]:
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(tiny_base)
    return [tokenizer(p)["input_ids"] for p in PROMPTS]


def test_adapted_layers_on_cuda_match_peft(tiny_base, adapters):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    model, routing, _, slots = load_with_adapters(tiny_base, adapters, "cuda")
    names = ["alpha", None, "beta"]
    ids = torch.tensor([p[:6] for p in _ids(tiny_base)], device="cuda")
    routing.rows, routing.active = torch.tensor([slots[n] for n in names], device="cuda"), True
    with torch.no_grad():
        prefill = model(ids).logits  # several tokens per row: all slots stacked
        decode = model(ids[:, :1]).logits  # one token per row: the BGMV kernels
    routing.rows, routing.active = None, False
    for row, name in enumerate(names):
        reference = AutoModelForCausalLM.from_pretrained(tiny_base, dtype=torch.float32).to("cuda").eval()
        if name is not None:
            reference = PeftModel.from_pretrained(reference, adapters[name]).eval()
        with torch.no_grad():
            torch.testing.assert_close(prefill[row], reference(ids[row : row + 1]).logits[0], rtol=1e-4, atol=1e-4)
            torch.testing.assert_close(decode[row], reference(ids[row : row + 1, :1]).logits[0], rtol=1e-4, atol=1e-4)


def test_graph_decode_matches_peft_and_recaptures_for_new_layers(tiny_base, adapters):
    model, routing, layers, slots = load_with_adapters(tiny_base, {"alpha": adapters["alpha"]}, "cuda", room=1)
    decoder = GraphDecoder(model, routing, max_batch=4, max_len=64, window_first=16)
    assert decoder.graphs_on
    prompts = _ids(tiny_base)
    plan = [(0, prompts[0], slots["alpha"], 9), (2, prompts[1], 0, 12), (12, prompts[2], slots["alpha"], 6)]
    plan.append((2, prompts[2], slots["alpha"], 5))  # two join in one step: one packed prefill, base and adapter
    got = run_requests(decoder, plan)
    assert {lora for _, _, lora in decoder.captured} == {False, True}  # plain-only steps and mixed steps
    for k, (_, prompt, slot, new) in enumerate(plan):
        assert got[k] == peft_greedy(tiny_base, adapters, prompt, "alpha" if slot else None, new, "cuda"), k
    # beta adapts layers alpha leaves alone: new layers, so the graphs captured so far hold stale tensors
    attach_adapter(model, layers, routing, read_adapter("beta", adapters["beta"], base_digest(tiny_base)), 2, 3)
    plan = [(0, prompts[1], 2, 10), (1, prompts[2], 0, 7)]
    got = run_requests(decoder, plan)
    for k, (_, prompt, slot, new) in enumerate(plan):
        assert got[k] == peft_greedy(tiny_base, adapters, prompt, "beta" if slot else None, new, "cuda"), k


GROUPS = [(9, 64, [0, 4096, 8192, 12288], 16), (9, 64, [0, 11008, 22016], 16), (9, 64, [0, 4096], 1)]
GROUPS += [(3, 8, [0, 520, 600, 680], 33), (5, 16, [0, 300], 130)]


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32])
@pytest.mark.parametrize(("slots", "rank", "starts", "batch"), GROUPS)
def test_grouped_expand_matches_float64(dtype, slots, rank, starts, batch):
    from loraops_serving.ops.sgmv import add_lora_grouped

    generator = torch.Generator(device="cuda").manual_seed(batch * rank + len(starts))
    members, total = len(starts) - 1, starts[-1]

    def rand(*shape, scale=1.0):
        return (torch.randn(*shape, device="cuda", generator=generator) * scale).to(dtype)

    xa, lora_b = rand(batch, slots * members * rank), rand(slots, total, rank, scale=rank**-0.5)
    scale = torch.rand(members, slots, device="cuda", generator=generator).to(dtype) + 0.5
    wide = rand(batch, total + slots * members * rank)
    base = wide[:, :total]  # rows of the fused product's output, as served
    rows = torch.randint(0, slots, (batch,), device="cuda", generator=generator)
    rows[0] = 0 if batch > 1 else slots - 1
    if batch > 1:
        rows[1] = slots - 1
    expect = base.double().clone()
    parts = xa.double().view(batch, slots, members, rank)[torch.arange(batch, device="cuda"), rows]
    for j in range(members):
        lo, hi = starts[j], starts[j + 1]
        y = parts[:, j] * scale.double()[j, rows][:, None]
        expect[:, lo:hi] += torch.einsum("mnr,mr->mn", lora_b.double()[rows, lo:hi], y) * (rows > 0)[:, None]
    out = add_lora_grouped(base.clone(), xa, lora_b, scale, rows, starts)
    error = ((out.double() - expect).norm() / (expect - base.double()).norm()).item()
    assert error < (1e-2 if dtype == torch.bfloat16 else 1e-5), error
    assert torch.equal(out[rows == 0], base[rows == 0])


def test_grouped_expand_takes_slots_of_any_stride():
    """One slot for every token of a prompt is an expanded (stride-0) view; the kernel must read it as its values."""
    from loraops_serving.ops.sgmv import add_lora_grouped, add_lora_grouped_reference

    generator = torch.Generator(device="cuda").manual_seed(5)
    xa = torch.randn(7, 3 * 2 * 8, device="cuda", generator=generator)
    lora_b = torch.randn(3, 48, 8, device="cuda", generator=generator)
    scale = torch.rand(2, 3, device="cuda", generator=generator)
    base = torch.randn(7, 48, device="cuda", generator=generator)
    rows = torch.tensor([2], device="cuda")[:, None].expand(-1, 7).reshape(-1)
    assert rows.stride(0) == 0
    got = add_lora_grouped(base.clone(), xa, lora_b, scale, rows, [0, 16, 48])
    expect = add_lora_grouped_reference(base.clone(), xa, lora_b, scale, rows.clone(), [0, 16, 48])
    torch.testing.assert_close(got, expect)
