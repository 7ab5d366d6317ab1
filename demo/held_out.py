"""Held-out loss: the mean loss on the response tokens (and EOS) of dolly records that neither the stand-in base nor
the fine-tunes trained on, measured the same way for every model.

The records are formatted and tokenized by the trainer's own code (``loraops_trainer.data``: the prompt template,
BOS, labels on the response and EOS only) and scored by the trainer's validation loop (packed rows, token-weighted
mean), so base, base + adapter and the merged model are compared on exactly the tokens training optimised.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

#: Rows of this many tokens when scoring (the trainer's ``tokens_per_step`` in the demo).
BUDGET = 2048


@dataclass(frozen=True)
class HeldOut:
    """One model's held-out loss over ``tokens`` scored tokens of ``records`` records."""

    loss: float
    tokens: int
    records: int

    @property
    def perplexity(self) -> float:
        return float(torch.tensor(self.loss).exp())


def samples(records: list[dict[str, Any]], tokenizer: Any, max_seq_length: int) -> list[Any]:
    """The records as the trainer tokenizes them (same template, truncation and labels; a record whose prompt alone
    fills ``max_seq_length`` is left out, as the trainer leaves it out)."""
    from loraops_trainer.data import parse_record, tokenize

    parsed = [parse_record(record, f"held-out record {index}") for index, record in enumerate(records)]
    return tokenize(parsed, tokenizer, max_seq_length, name="held-out").samples


def held_out_loss(model: Any, tokenized: list[Any], pad_token_id: int) -> HeldOut:
    """The trainer's validation loss of ``model`` over ``tokenized``."""
    from loraops_trainer.evaluation import validation_loss
    from loraops_trainer.packing import PackedCollator

    loss, tokens = validation_loss(model, tokenized, BUDGET, PackedCollator(pad_token_id), where="held-out records")
    return HeldOut(loss, tokens, len(tokenized))


def compare(
    base_dir: Path, adapter_dir: Path, merged_dir: Path, records: list[dict[str, Any]], max_seq_length: int
) -> dict[str, HeldOut]:
    """Held-out loss of the base, the base with the adapter (PEFT) and the merged model, all in float32."""
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    from loraops_trainer.inputs import load_tokenizer

    tokenizer = load_tokenizer(str(base_dir))
    tokenized = samples(records, tokenizer, max_seq_length)

    def load(folder: Path) -> Any:
        return AutoModelForCausalLM.from_pretrained(str(folder), dtype=torch.float32)

    results = {"base": held_out_loss(load(base_dir), tokenized, tokenizer.pad_token_id)}
    adapted = PeftModel.from_pretrained(load(base_dir), str(adapter_dir))
    results["adapter"] = held_out_loss(adapted, tokenized, tokenizer.pad_token_id)
    results["merged"] = held_out_loss(load(merged_dir), tokenized, tokenizer.pad_token_id)
    return results
