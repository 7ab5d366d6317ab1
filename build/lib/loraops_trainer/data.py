"""Dolly-style records -> tokenized samples with loss on the response tokens only.

Prompt template (one place, used for training, evaluation and sample generations)::

    ### Instruction:
    {instruction}

    ### Context:          <- this block only when context is not empty
    {context}

    ### Response:
    {response}</s>

A record is either dolly-shaped (``instruction``, ``response``; optional ``context``, ``category``) or
has a plain ``text`` field (loss on every token).
"""

from __future__ import annotations

import hashlib
import json
import logging
import random
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

logger = logging.getLogger(__name__)

IGNORE_INDEX = -100
RESPONSE_MARKER = "### Response:\n"


class DataError(ValueError):
    """A data file or record is unusable; the message names the file and line."""


@dataclass(frozen=True)
class Record:
    prompt: str
    response: str
    category: str | None
    source: str  # "<file>:<line>"


@dataclass(frozen=True)
class Sample:
    """One tokenized record: ``labels`` is ``IGNORE_INDEX`` on prompt tokens."""

    input_ids: list[int]
    labels: list[int]

    def __len__(self) -> int:
        return len(self.input_ids)


def format_prompt(instruction: str, context: str = "") -> str:
    parts = [f"### Instruction:\n{instruction.strip()}\n"]
    if context and context.strip():
        parts.append(f"### Context:\n{context.strip()}\n")
    parts.append(RESPONSE_MARKER)
    return "\n".join(parts)


def data_files(path: Path) -> list[Path]:
    """``path`` itself, or the ``*.jsonl``/``*.json`` files of a folder in name order."""
    path = Path(path)
    if path.is_file():
        return [path]
    if path.is_dir():
        files = sorted(p for p in path.iterdir() if p.suffix in (".jsonl", ".json") and p.is_file())
        if not files:
            raise DataError(f"{path}: no .jsonl or .json files")
        return files
    raise DataError(f"{path}: no such file or folder")


def _string_field(obj: dict[str, Any], key: str, where: str, required: bool) -> str:
    value = obj.get(key)
    if value is None:
        if required:
            raise DataError(f"{where}: missing field '{key}'")
        return ""
    if not isinstance(value, str):
        raise DataError(f"{where}: field '{key}' must be a string, got {type(value).__name__}")
    return value


def parse_record(obj: Any, where: str) -> Record:
    if not isinstance(obj, dict):
        raise DataError(f"{where}: expected a JSON object, got {type(obj).__name__}")
    if "text" in obj and "instruction" not in obj:
        text = _string_field(obj, "text", where, required=True)
        if not text.strip():
            raise DataError(f"{where}: field 'text' is empty")
        return Record(prompt="", response=text, category=obj.get("category"), source=where)
    instruction = _string_field(obj, "instruction", where, required=True)
    response = _string_field(obj, "response", where, required=True)
    if not instruction.strip():
        raise DataError(f"{where}: field 'instruction' is empty")
    if not response.strip():
        raise DataError(f"{where}: field 'response' is empty")
    context = _string_field(obj, "context", where, required=False)
    category = _string_field(obj, "category", where, required=False) or None
    return Record(
        prompt=format_prompt(instruction, context), response=response.strip(), category=category, source=where
    )


def read_records(path: Path) -> list[Record]:
    """Every record of a JSONL file or folder; the first bad line raises with its location."""
    records: list[Record] = []
    for file in data_files(path):
        with open(file, encoding="utf-8") as handle:
            for number, line in enumerate(handle, start=1):
                if not line.strip():
                    continue
                where = f"{file}:{number}"
                try:
                    obj = json.loads(line)
                except json.JSONDecodeError as error:
                    raise DataError(f"{where}: not valid JSON ({error.msg})") from None
                records.append(parse_record(obj, where))
    if not records:
        raise DataError(f"{path}: no records")
    return records


def filter_categories(records: list[Record], categories: list[str]) -> list[Record]:
    if not categories:
        return records
    kept = [r for r in records if r.category in categories]
    if not kept:
        present = sorted({r.category or "<none>" for r in records})
        raise DataError(f"no records in categories {categories}; the data has {present}")
    return kept


def dataset_digest(*paths: Path) -> str:
    """``sha256:<hex>`` over the channels' data files: each file's position, name and bytes."""
    digest = hashlib.sha256()
    for channel, path in enumerate(paths):
        for file in data_files(path):
            with open(file, "rb") as handle:
                content = hashlib.file_digest(handle, "sha256").hexdigest()
            digest.update(f"{channel}\0{file.name}\0{content}\n".encode())
    return f"sha256:{digest.hexdigest()}"


def prompt_ids(record: Record, tokenizer: Any) -> list[int]:
    """BOS + the prompt's tokens: what training scores after, and what generation continues."""
    bos = [tokenizer.bos_token_id] if tokenizer.bos_token_id is not None else []
    return bos + (tokenizer(record.prompt, add_special_tokens=False)["input_ids"] if record.prompt else [])


@dataclass(frozen=True)
class Channel:
    """One data channel tokenized: its samples and what happened to its records."""

    name: str
    source: str
    samples: list[Sample]
    records_read: int
    dropped_too_long: int
    truncated: int

    def summary(self) -> dict[str, Any]:
        """What the manifest records of the channel."""
        return {
            "source": Path(self.source).name,
            "records_read": self.records_read,
            "samples": len(self.samples),
            "dropped": {"prompt_longer_than_max_seq_length": self.dropped_too_long},
            "truncated_to_max_seq_length": self.truncated,
        }


def tokenize(
    records: Iterable[Record],
    tokenizer: Any,
    max_seq_length: int,
    *,
    name: str = "training",
    source: str = "",
    max_dropped_fraction: float = 1.0,
) -> Channel:
    """BOS + prompt + response + EOS; labels only on response (+EOS); truncated at ``max_seq_length``.

    A record whose prompt alone fills ``max_seq_length`` is dropped; more than ``max_dropped_fraction`` of the
    channel dropped fails with the channel's source named.
    """
    samples: list[Sample] = []
    records = list(records)
    dropped = truncated = 0
    eos = [tokenizer.eos_token_id]
    for record in records:
        prompt = prompt_ids(record, tokenizer)
        response_ids = tokenizer(record.response, add_special_tokens=False)["input_ids"] + eos
        if len(prompt) >= max_seq_length - 1:
            dropped += 1
            continue
        truncated += len(prompt) + len(response_ids) > max_seq_length
        input_ids = (prompt + response_ids)[:max_seq_length]
        labels = ([IGNORE_INDEX] * len(prompt) + response_ids)[:max_seq_length]
        samples.append(Sample(input_ids=input_ids, labels=labels))
    where = f"{name} data {source}".rstrip()
    if not samples:
        raise DataError(f"{where}: no sample fits max_seq_length={max_seq_length}")
    if records and dropped / len(records) > max_dropped_fraction:
        raise DataError(
            f"{where}: {dropped} of {len(records)} records ({dropped / len(records):.0%}) have a prompt "
            f"longer than max_seq_length={max_seq_length}, more than max_dropped_fraction="
            f"{max_dropped_fraction}; raise max_seq_length or max_dropped_fraction"
        )
    if dropped:
        logger.warning(
            "%s: dropped %d of %d record(s) whose prompt alone exceeds max_seq_length=%d",
            where,
            dropped,
            len(records),
            max_seq_length,
        )
    return Channel(
        name=name,
        source=source,
        samples=samples,
        records_read=len(records),
        dropped_too_long=dropped,
        truncated=truncated,
    )


def split(records: list[Record], fraction: float, seed: int) -> tuple[list[Record], list[Record]]:
    """Deterministic train/validation split (validation gets at least one record when fraction > 0)."""
    if fraction <= 0:
        return records, []
    order = list(range(len(records)))
    random.Random(seed).shuffle(order)
    n_val = max(1, int(round(len(records) * fraction)))
    if n_val >= len(records):
        raise DataError(f"validation_fraction={fraction} leaves no training records out of {len(records)}")
    val = {i for i in order[:n_val]}
    return [r for i, r in enumerate(records) if i not in val], [r for i, r in enumerate(records) if i in val]
