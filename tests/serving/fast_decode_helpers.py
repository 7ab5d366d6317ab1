"""Shared by the CPU and GPU tests of the fast decode path: a base with adapters in slots, peft's greedy tokens per
prompt, and a small continuous-batching loop over :class:`GraphDecoder` in which requests join and leave."""

from __future__ import annotations

from pathlib import Path

import torch

from loraops_serving.graph_decode import GraphDecoder
from loraops_serving.layouts import base_digest, read_adapter
from loraops_serving.multi_lora import MultiLoRALinear, Routing, attach_adapter


def load_with_adapters(base: Path, adapters: dict[str, Path], device: str, room: int = 0):
    """The float32 base on ``device`` with each adapter in slot 1, 2, ... (and ``room`` more slots); returns the
    model, its routing, the adapted layers and the slots by name."""
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(base, dtype=torch.float32).to(device).eval()
    routing, layers = Routing(), {}
    slots: dict[str | None, int] = {None: 0}
    for slot, (name, folder) in enumerate(adapters.items(), start=1):
        attach_adapter(
            model, layers, routing, read_adapter(name, folder, base_digest(base)), slot, len(adapters) + 1 + room
        )
        slots[name] = slot
    assert all(isinstance(layer, MultiLoRALinear) for layer in layers.values())
    return model, routing, layers, slots


def peft_greedy(base: Path, adapters: dict[str, Path], prompt: list[int], adapter: str | None, new: int, device: str):
    """peft's (or plain transformers') greedy continuation of one prompt, ``new`` tokens, no EOS stop."""
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(base, dtype=torch.float32).to(device).eval()
    if adapter is not None:
        model = PeftModel.from_pretrained(model, adapters[adapter]).eval()
    ids = torch.tensor([prompt], device=device)
    with torch.no_grad():
        out = model.generate(
            input_ids=ids, attention_mask=torch.ones_like(ids), max_new_tokens=new, min_new_tokens=new, do_sample=False
        )
    return out[0, len(prompt) :].tolist()


def run_requests(decoder: GraphDecoder, requests: list[tuple[int, list[int], int, int]]) -> dict[int, list[int]]:
    """Greedy decoding of ``(join_step, prompt, slot, new_tokens)`` requests: each joins the running batch at its
    step (taking the lowest free row), leaves when it has its tokens; returns each request's tokens."""
    free, running, done = list(range(decoder.max_batch)), {}, {}
    step = 0
    while len(done) < len(requests):
        joining = [k for k, r in enumerate(requests) if r[0] == step]
        if joining:
            rows = [free.pop(0) for _ in joining]
            logits = decoder.prefill(rows, [requests[k][1] for k in joining], [requests[k][2] for k in joining])
            for k, row, token in zip(joining, rows, logits.argmax(-1).tolist()):
                running[row] = {"id": k, "tokens": [token], "pos": len(requests[k][1])}
        for row in [r for r, s in running.items() if len(s["tokens"]) == requests[s["id"]][3]]:
            state = running.pop(row)
            done[state["id"]] = state["tokens"]
            free = sorted([*free, row])
        if running:
            n = max(running) + 1
            tokens = [running[r]["tokens"][-1] if r in running else 0 for r in range(n)]
            positions = [running[r]["pos"] if r in running else -1 for r in range(n)]
            slots = [requests[running[r]["id"]][2] if r in running else 0 for r in range(n)]
            logits = decoder.decode(tokens, positions, slots)
            for r, token in enumerate(logits.argmax(-1).tolist()):
                if r in running:
                    running[r]["tokens"].append(token)
                    running[r]["pos"] += 1
        step += 1
    return done
