"""Validation loss, perplexity, sample generations and the ModelMetrics-shaped report, and the evaluation a run
does after training (:func:`evaluate`)."""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from loraops.manifest import EVALUATION_FILE, LANGUAGE_MODELING_METRICS, VALIDATION_LOSS
from loraops_trainer.data import IGNORE_INDEX, DataError, Record, Sample, prompt_ids
from loraops_trainer.guards import TrainingFault
from loraops_trainer.inputs import PreparedData
from loraops_trainer.packing import PackedCollator, PackedDataset
from loraops_trainer.settings import TrainConfig
from loraops_trainer.tracking import TrackingCallback

SAMPLES_FILE = "samples.json"


@torch.no_grad()
def validation_loss(
    model: Any,
    samples: Sequence[Sample],
    budget: int,
    collate: PackedCollator,
    max_batches: int = 0,
    where: str = "validation data",
) -> tuple[float, int]:
    """Token-weighted mean loss over packed validation batches (laid out by the training collator ``collate``),
    and the number of scored tokens."""
    dataset = PackedDataset(samples, budget, seed=0)
    device = next(p for p in model.parameters()).device
    total, tokens = 0.0, 0
    was_training = model.training
    model.eval()
    try:
        for index in range(len(dataset)):
            if max_batches and index >= max_batches:
                break
            batch = {k: v.to(device) if torch.is_tensor(v) else v for k, v in collate([dataset[index]]).items()}
            scored = int((batch["labels"][:, 1:] != IGNORE_INDEX).sum())
            if scored == 0:
                continue
            loss = model(**batch).loss
            total += float(loss) * scored
            tokens += scored
    finally:
        model.train(was_training)
    if tokens == 0:
        raise DataError(f"{where}: no response tokens to score")
    return total / tokens, tokens


def metrics_report(validation: float, train_loss: float | None, tokens: int) -> dict[str, Any]:
    """SageMaker ModelMetrics statistics JSON (``<problem>_metrics`` -> name -> value)."""
    metrics = {
        VALIDATION_LOSS: validation,
        "perplexity": math.exp(min(validation, 50.0)),
    }
    if train_loss is not None:
        metrics["train_loss"] = train_loss
    return {
        LANGUAGE_MODELING_METRICS: {
            name: {"value": value, "standard_deviation": "NaN"} for name, value in metrics.items()
        },
        "validation_tokens": tokens,
    }


@torch.no_grad()
def sample_generations(
    model: Any, tokenizer: Any, records: Sequence[Record], max_new_tokens: int
) -> list[dict[str, str]]:
    """Greedy completions of the first validation prompts, next to the reference responses."""
    device = next(p for p in model.parameters()).device
    results = []
    was_training = model.training
    model.eval()
    try:
        for record in records:
            if not record.prompt:
                continue
            ids = prompt_ids(record, tokenizer)
            input_ids = torch.tensor([ids], device=device)
            output = model.generate(
                input_ids=input_ids,
                attention_mask=torch.ones_like(input_ids),
                max_new_tokens=max_new_tokens,
                do_sample=False,
                use_cache=True,
                pad_token_id=tokenizer.pad_token_id,
            )
            generated = tokenizer.decode(output[0, len(ids) :], skip_special_tokens=True)
            results.append({"prompt": record.prompt, "reference": record.response, "generated": generated})
    finally:
        model.train(was_training)
    return results


def evaluate(
    config: TrainConfig,
    model: Any,
    tokenizer: Any,
    prepared: PreparedData,
    collator: PackedCollator,
    metrics: dict[str, Any],
    tracking: TrackingCallback,
    reports_dir: Path,
) -> list[Path]:
    """Validation loss/perplexity and sample generations into ``metrics`` and report files; returns the files."""
    if prepared.validation is None:
        return []
    loss, tokens = validation_loss(
        model,
        prepared.validation.samples,
        config.tokens_per_step,
        collator,
        config.eval_batches,
        where=f"validation data {prepared.validation.source}",
    )
    if not math.isfinite(loss):
        raise TrainingFault(
            f"validation loss is {loss} after training: the run diverged (its weights are finite but useless); "
            "lower learning_rate; nothing was published"
        )
    report = metrics_report(loss, metrics["train_loss"], tokens)
    metrics.update({VALIDATION_LOSS: loss, "perplexity": report[LANGUAGE_MODELING_METRICS]["perplexity"]["value"]})
    tracking.log_final({"eval_loss": loss, "perplexity": metrics["perplexity"]}, metrics["global_step"])
    files = [write_json(reports_dir / EVALUATION_FILE, report)]
    if config.sample_generations:
        samples = sample_generations(
            model, tokenizer, prepared.validation_records[: config.sample_generations], config.max_new_tokens
        )
        files.append(write_json(reports_dir / SAMPLES_FILE, samples))
    return files


def write_json(path: Path, data: Any) -> Path:
    path.write_text(json.dumps(data, indent=2, allow_nan=False) + "\n")
    return path
