"""The demo's stand-in base model: a small Llama-architecture model (``loraops_trainer.synthetic_base``) with a BPE
tokenizer trained on the dolly sample, then pre-trained on plain text: the instructions and contexts of the sample,
each a paragraph of its own, never its answers, the prompt template or an end-of-text token. So it writes
English-like words (a random base would only repeat one token, and no fine-tune could show anything) but has never
seen an answer follow a question nor a text end: answering, the ``### Response:`` template and stopping after an
answer with ``</s>`` are what the fine-tune teaches. The sample's last :data:`HELD_OUT` records are left out of
everything, so the held-out loss is measured on text no model saw. It is not Llama-2: it stands in for one so the
lifecycle runs on a laptop CPU. Built once per recipe and kept in the work directory (``.demo/base-<size>``)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import torch

from loraops_trainer.synthetic_base import SMALL, TINY, llama_shape

#: The stand-in's shapes: ``demo`` (4 layers of width 128, a 1,024-token vocabulary, about 1.1M parameters) for
#: ``make demo``; ``tiny`` and ``small`` from ``synthetic_base`` (CI's reduced run takes ``tiny``).
SHAPES = {
    "demo": llama_shape(128, 352, layers=4, heads=4, kv_heads=4, vocab=1024),
    "tiny": TINY,
    "small": SMALL,
}
#: The sample's last records: never pre-trained or fine-tuned on; the held-out loss and the answers use them.
HELD_OUT = 40
#: Pre-training steps of the stand-in (8 rows of 128 tokens each: about 5.6 passes over its corpus in the demo shape).
PRETRAIN_STEPS = 400
#: What the stand-in is pre-trained on: the records' questions and passages, not their answers.
CORPUS = ("instruction", "context")


def split_dolly(dolly: Path) -> tuple[bytes, list[dict]]:
    """The sample without its held-out records (the fine-tunes' training data), and those records."""
    lines = dolly.read_text().splitlines()
    return ("\n".join(lines[:-HELD_OUT]) + "\n").encode(), [json.loads(line) for line in lines[-HELD_OUT:]]


def build_stand_in(folder: Path, size: str, dolly: Path, steps: int = PRETRAIN_STEPS, seed: int = 0) -> Path:
    """Write the stand-in to ``folder`` (kept if already there: its ``stand-in.json`` says how it was made)."""
    from transformers import AutoTokenizer, LlamaForCausalLM

    from loraops_trainer.synthetic_base import build_base_model, dolly_texts

    recipe = {
        "size": size,
        "steps": steps,
        "seed": seed,
        "corpus": dolly.name,
        "held_out": HELD_OUT,
        "end_of_text": False,
        "documents": "fields",
    }
    marker = folder / "stand-in.json"
    if marker.is_file() and json.loads(marker.read_text()) == recipe:
        return folder
    shutil.rmtree(folder, ignore_errors=True)
    vocabulary = dolly_texts(dolly, leave_out_last=HELD_OUT)  # the tokenizer knows the answers' words
    build_base_model(folder, vocabulary, SHAPES[size], seed=seed)
    texts = corpus(dolly)
    tokenizer = AutoTokenizer.from_pretrained(str(folder))
    model = LlamaForCausalLM.from_pretrained(str(folder), dtype=torch.float32)
    pretrain(model, tokenizer, texts, steps, seed)
    model.save_pretrained(str(folder), safe_serialization=True)
    marker.write_text(json.dumps(recipe))
    return folder


def corpus(dolly: Path) -> list[str]:
    """The pre-training texts: each :data:`CORPUS` field of each record not held out, as a paragraph of its own."""
    records = [json.loads(line) for line in dolly.read_text().splitlines()[:-HELD_OUT]]
    return [record[field].strip() for record in records for field in CORPUS if record.get(field, "").strip()]


def pretrain(model, tokenizer, texts: list[str], steps: int, seed: int, rows: int = 8, length: int = 128) -> float:
    """Full-parameter next-token training on the texts, each a paragraph (no BOS, no EOS: the base never learns to
    stop), packed into ``rows`` x ``length`` blocks; returns the last loss. One thread: at this model's size a second
    one costs more CPU time than it saves. (A plain loop: the trainer fine-tunes LoRA adapters, not whole models.)"""
    ids = torch.tensor([t for text in texts for t in tokenizer(text + "\n\n", add_special_tokens=False)["input_ids"]])
    blocks = ids[: len(ids) // length * length].view(-1, length)
    generator = torch.Generator().manual_seed(seed)
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3, weight_decay=0.0)
    schedule = torch.optim.lr_scheduler.OneCycleLR(optimizer, 3e-3, total_steps=steps, pct_start=0.05)
    model.train()
    loss = torch.tensor(float("nan"))
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        for _ in range(steps):
            batch = blocks[torch.randint(len(blocks), (rows,), generator=generator)]
            loss = model(input_ids=batch, labels=batch).loss
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            optimizer.step()
            schedule.step()
            optimizer.zero_grad(set_to_none=True)
    finally:
        torch.set_num_threads(threads)
    model.eval()
    return float(loss.detach())
