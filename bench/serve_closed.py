"""The serving bench's closed batches (``serve_throughput.py`` 1. and 3.): loraops' ``GraphDecoder`` driven
directly, transformers ``generate`` eager and with a static cache, and the same batches as requests through the
engine's scheduler."""

from __future__ import annotations

import statistics
import time
from pathlib import Path

import torch
from serve_setup import closed_prompts, sync, timed

LAYOUTS = ("a_plain", "b_one_adapter", "c_eight_mixed")


class Loraops:
    """The model with 8 adapters in slots 1..8 and a :class:`GraphDecoder` over it."""

    def __init__(self, base: Path, adapters: list[Path], max_batch: int, max_len: int, device: str) -> None:
        from transformers import AutoModelForCausalLM

        from loraops_serving.graph_decode import GraphDecoder
        from loraops_serving.layouts import base_digest, read_adapter
        from loraops_serving.multi_lora import Routing, attach_adapter

        self.model = AutoModelForCausalLM.from_pretrained(base, dtype=torch.bfloat16).to(device).eval()
        self.routing, layers = Routing(), {}
        digest = base_digest(base)
        for slot, folder in enumerate(adapters, start=1):
            adapter = read_adapter(folder.name, folder, digest, allow_unverified=True)  # no manifests here
            attach_adapter(self.model, layers, self.routing, adapter, slot, len(adapters) + 1)
        self.decoder = GraphDecoder(self.model, self.routing, max_batch=max_batch, max_len=max_len)

    def closed(self, prompts: list[list[int]], slots: list[int], new: int) -> tuple[int, list[list[int]], float]:
        """Greedy ``new`` tokens for each prompt in rows 0..n-1; returns (tokens, their ids, decode seconds)."""
        n = len(prompts)
        logits = self.decoder.prefill(list(range(n)), prompts, slots)
        token = logits.argmax(-1)
        produced = [token]
        lengths = torch.tensor([len(p) for p in prompts])
        slots_t = torch.tensor(slots)
        sync()
        start = time.perf_counter()
        for step in range(new - 1):
            # the scheduler's step: positions and slots come from the host, the fed tokens stay on the device
            token = self.decoder.decode(token, lengths + step, slots_t).argmax(-1)
            produced.append(token)
            token.tolist()  # a real scheduler reads each step's tokens (stops, streaming): keep that sync
        sync()
        decode_s = time.perf_counter() - start
        ids = torch.stack(produced, 1).tolist()
        return n * new, ids, decode_s


def closed_batches(args, ours: Loraops, base: Path, tokenizer, results: list) -> None:
    from transformers import AutoModelForCausalLM

    texts = closed_prompts(tokenizer, 16, args.prompt_tokens)
    layouts = {"a_plain": lambda n: [0] * n, "b_one_adapter": lambda n: [1] * n}
    layouts["c_eight_mixed"] = lambda n: [1 + k % 8 for k in range(n)]
    ours.decoder.warm_up(windows=[w for w in ours.decoder.window_buckets if w <= 2 * args.prompt_tokens + 128])
    reference_ids = {}
    for batch in (1, 16):
        for layout in ("a_plain", "c_eight_mixed") if args.quick else LAYOUTS:
            decode_times = []

            def run(batch=batch, layout=layout, decode_times=decode_times) -> int:
                tokens, ids, decode_s = ours.closed(texts[:batch], layouts[layout](batch), args.new_tokens)
                decode_times.append(decode_s)
                reference_ids[(batch, layout)] = ids
                return tokens

            result = timed(run, args.runs, 1)
            step_ms = 1000 * statistics.median(decode_times[1:]) / (args.new_tokens - 1)
            results.append({"impl": "loraops", "layout": layout, "batch": batch, **result, "decode_step_ms": step_ms})
            print(results[-1], flush=True)
    if args.quick:
        return

    device = ours.decoder.device
    model = AutoModelForCausalLM.from_pretrained(base, dtype=torch.bfloat16).to(device).eval()
    for impl, extra in (("transformers_eager", {}), ("transformers_static", {"cache_implementation": "static"})):
        for batch in (1, 16):
            ids = torch.tensor(texts[:batch], device=device)

            def hf(ids=ids, extra=extra, model=model) -> int:
                with torch.no_grad():
                    out = model.generate(
                        input_ids=ids,
                        attention_mask=torch.ones_like(ids),
                        max_new_tokens=args.new_tokens,
                        min_new_tokens=args.new_tokens,
                        do_sample=False,
                        pad_token_id=tokenizer.pad_token_id,
                        **extra,
                    )
                hf.last = out[:, ids.shape[1] :].tolist()
                return out[:, ids.shape[1] :].numel()

            result = timed(hf, args.runs, 2 if extra else 1)  # static: the first calls compile
            mine = reference_ids[(batch, "a_plain")]
            agree = [next((k for k, (x, y) in enumerate(zip(a, b)) if x != y), len(a)) for a, b in zip(mine, hf.last)]
            # random weights give nearly flat logits: bf16 rounding differences flip near-ties (fp32 agrees: GPU tests)
            result["first_disagreement_with_loraops_plain"] = {"min": min(agree), "mean": statistics.mean(agree)}
            results.append({"impl": impl, "layout": "a_plain", "batch": batch, **result})
            print(results[-1], flush=True)
    del model
    torch.cuda.empty_cache()


def scheduled_batches(args, base: Path, adapters: list[Path], tokenizer, results: list) -> None:
    """The closed batches as requests through the engine's scheduler (the product's path), greedy, one request
    of ``batch`` inputs; counts the tokens the requests produced (an EOS ends a row early)."""
    from loraops_serving.engine import Engine, Row
    from loraops_serving.settings import ServingSettings

    settings = ServingSettings(
        max_batch_size=16,
        max_resident_adapters=8,
        max_new_tokens=args.new_tokens,
        max_total_tokens=2 * args.prompt_tokens + args.new_tokens,  # room for re-tokenized prompts
        allow_unverified_adapters=True,  # the bench's adapters carry no manifest
    )
    engine = Engine(base, settings, adapters)
    texts = [tokenizer.decode(ids) for ids in closed_prompts(tokenizer, 16, args.prompt_tokens)]
    names = [folder.name for folder in adapters]
    layouts = {"a_plain": lambda k: None, "c_eight_mixed": lambda k: names[k % 8]}
    for batch in (1, 16):
        for layout, adapter in layouts.items():
            rows = [Row(texts[k], adapter(k), args.new_tokens) for k in range(batch)]
            steps = []

            def run(rows=rows, steps=steps, engine=engine) -> int:
                before = engine.scheduler.steps
                generations = engine.generate(rows)
                steps.append(engine.scheduler.steps - before)
                return sum(g.tokens for g in generations)

            result = timed(run, args.runs, 1)
            result |= {"backend": engine.backend.name, "decode_steps_last_run": steps[-1]}
            result["step_ms"] = 1000 * result["p50_s"] / max(steps[-1], 1)  # prefill included
            results.append({"impl": "loraops_scheduler", "layout": layout, "batch": batch, **result})
            print(results[-1], flush=True)
    engine.scheduler.shutdown()
