"""The demo's stand-in base model: a small Llama-architecture model (``loraops_trainer.synthetic_base``) with a BPE
tokenizer trained on the dolly sample, then briefly pre-trained on the sample's text so that it writes English-like
words (a random base would only repeat one token, and no fine-tune could show anything). It is not Llama-2: it
stands in for one so the lifecycle runs on a laptop CPU. Built once per size and kept in the work directory.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import torch

SHAPES = ("tiny", "small")


def build_stand_in(folder: Path, size: str, dolly: Path, steps: int = 300, seed: int = 0) -> Path:
    """Write the stand-in to ``folder`` (kept if already there: its ``stand-in.json`` says how it was made)."""
    from transformers import AutoTokenizer, LlamaForCausalLM

    from loraops_trainer.synthetic_base import SMALL, TINY, build_base_model, dolly_texts

    recipe = {"size": size, "steps": steps, "seed": seed, "corpus": dolly.name}
    marker = folder / "stand-in.json"
    if marker.is_file() and json.loads(marker.read_text()) == recipe:
        return folder
    shutil.rmtree(folder, ignore_errors=True)
    texts = dolly_texts(dolly)
    build_base_model(folder, texts, {"tiny": TINY, "small": SMALL}[size], seed=seed)
    tokenizer = AutoTokenizer.from_pretrained(str(folder))
    model = LlamaForCausalLM.from_pretrained(str(folder), dtype=torch.float32)
    pretrain(model, tokenizer, texts, steps, seed)
    model.save_pretrained(str(folder), safe_serialization=True)
    marker.write_text(json.dumps(recipe))
    return folder


def pretrain(model, tokenizer, texts: list[str], steps: int, seed: int, rows: int = 8, length: int = 128) -> float:
    """Full-parameter next-token training on the texts, packed into ``rows`` x ``length`` blocks; returns the
    last loss. (A plain loop: the trainer fine-tunes LoRA adapters, not whole models.)"""
    ids = torch.tensor([t for text in texts for t in tokenizer(text + tokenizer.eos_token)["input_ids"]])
    blocks = ids[: len(ids) // length * length].view(-1, length)
    generator = torch.Generator().manual_seed(seed)
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3, weight_decay=0.0)
    schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, steps)
    model.train()
    loss = torch.tensor(float("nan"))
    for _ in range(steps):
        batch = blocks[torch.randint(len(blocks), (rows,), generator=generator)]
        loss = model(input_ids=batch, labels=batch).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        schedule.step()
        optimizer.zero_grad(set_to_none=True)
    model.eval()
    return float(loss)
