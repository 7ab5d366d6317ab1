"""One training run end to end: data -> QLoRA training -> evaluation -> artifacts + manifest."""

from __future__ import annotations

import json
import logging
import os
import subprocess
import tempfile
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import torch

import loraops
from loraops.manifest import Manifest, folder_weights_digest
from loraops_trainer import data as data_lib
from loraops_trainer.config import TrainConfig
from loraops_trainer.evaluation import (
    EVALUATION_FILE,
    SAMPLES_FILE,
    metrics_report,
    sample_generations,
    validation_loss,
    write_json,
)
from loraops_trainer.model import add_lora, load_base_model
from loraops_trainer.outputs import write_artifacts
from loraops_trainer.packing import PackedCollator, PackedDataset
from loraops_trainer.tracking import LOSS_CURVE_FILE, METRICS_FILE, TrackingCallback, backends_from_environment

logger = logging.getLogger(__name__)


@dataclass
class PreparedData:
    train: list[data_lib.Sample]
    validation: list[data_lib.Sample]
    validation_records: list[data_lib.Record]
    digest: str


def prepare_data(config: TrainConfig, tokenizer: Any) -> PreparedData:
    """Read, filter, split and tokenize; every problem raises ``DataError`` before training starts."""
    records = data_lib.filter_categories(data_lib.read_records(Path(config.train_path)), config.category_filter)
    digest = data_lib.dataset_digest(Path(config.train_path))
    if config.validation_path:
        validation = data_lib.filter_categories(
            data_lib.read_records(Path(config.validation_path)), config.category_filter)
        train = records
        digest = f"{digest},{data_lib.dataset_digest(Path(config.validation_path))}"
    else:
        train, validation = data_lib.split(records, config.validation_fraction, config.seed)
    return PreparedData(
        train=data_lib.tokenize(train, tokenizer, config.max_seq_length),
        validation=data_lib.tokenize(validation, tokenizer, config.max_seq_length) if validation else [],
        validation_records=validation,
        digest=digest,
    )


def load_tokenizer(path: str) -> Any:
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(path)
    if tokenizer.eos_token_id is None:
        raise data_lib.DataError(f"{path}: the tokenizer has no EOS token")
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.unk_token or tokenizer.eos_token
    return tokenizer


def static_shapes(config: TrainConfig) -> bool:
    """Pad rows to the budget only for compiled attention (flex), which recompiles on new shapes."""
    from loraops_trainer.model import attention_implementation

    return config.static_shapes == "on" or (
        config.static_shapes == "auto" and attention_implementation(config) == "flex_attention")


def default_optimizer(config: TrainConfig) -> str:
    if config.optimizer != "auto":
        return config.optimizer
    return "adamw_torch_fused" if torch.cuda.is_available() else "adamw_torch"


def training_arguments(config: TrainConfig, checkpoint_dir: str) -> Any:
    from transformers import TrainingArguments

    bf16 = torch.cuda.is_available() and config.dtype in ("auto", "bfloat16")
    return TrainingArguments(
        output_dir=checkpoint_dir,
        per_device_train_batch_size=1,  # one item is one packed micro-batch of tokens_per_step tokens
        gradient_accumulation_steps=config.gradient_accumulation_steps,
        num_train_epochs=config.epochs,
        max_steps=config.max_steps,
        learning_rate=config.learning_rate,
        weight_decay=config.weight_decay,
        warmup_steps=config.warmup_steps,
        lr_scheduler_type=config.lr_scheduler,
        optim=default_optimizer(config),
        max_grad_norm=config.max_grad_norm,
        bf16=bf16,
        logging_steps=config.logging_steps,
        save_strategy="steps",
        save_steps=config.save_steps,
        save_total_limit=config.save_total_limit,
        seed=config.seed,
        data_seed=config.seed,
        report_to=[],
        dataloader_num_workers=0,
        remove_unused_columns=False,
        ddp_find_unused_parameters=False,
        # torchrun on CPU (tests, local runs) needs gloo; on GPUs transformers picks NCCL itself.
        ddp_backend=None if torch.cuda.is_available() or int(os.environ.get("WORLD_SIZE", "1")) == 1 else "gloo",
        disable_tqdm=True,
        eval_strategy="no",
    )


def code_version() -> str:
    sha = os.environ.get("LORAOPS_GIT_SHA", "")
    if not sha:
        try:
            sha = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                                 cwd=Path(__file__).parent, timeout=5).stdout.strip()
        except (OSError, subprocess.SubprocessError):
            sha = ""
    return f"loraops {loraops.__version__}" + (f" ({sha})" if sha else "")


def idle_gpu_warning(environ: dict[str, str]) -> str | None:
    """A message when SageMaker gave this job more GPUs (``SM_NUM_GPUS``) than processes were started."""
    gpus = int(environ.get("SM_NUM_GPUS", "0") or 0)
    processes = int(environ.get("LOCAL_WORLD_SIZE", "1") or 1)
    if gpus > processes:
        return (f"SM_NUM_GPUS={gpus} but {processes} training process(es) on this host: {gpus - processes} GPU(s) "
                "idle; launch with torchrun (SageMaker distribution torch_distributed) to use them all")
    return None


def last_checkpoint(checkpoint_dir: str) -> str | None:
    """The newest *complete* checkpoint: the Trainer writes ``trainer_state.json`` last, so a folder
    without a readable one was cut off mid-save (e.g. a spot interruption) and is skipped."""
    folder = Path(checkpoint_dir) if checkpoint_dir else None
    if folder is None or not folder.is_dir():
        return None
    candidates = [p for p in folder.glob("checkpoint-*") if p.is_dir() and p.name.split("-")[-1].isdigit()]
    for candidate in sorted(candidates, key=lambda p: int(p.name.split("-")[-1]), reverse=True):
        try:
            json.loads((candidate / "trainer_state.json").read_text())
            return str(candidate)
        except (OSError, ValueError):
            logger.warning("skipping incomplete checkpoint %s", candidate)
    return None


def build_trainer(config: TrainConfig, model: Any, tokenizer: Any, samples: list[data_lib.Sample],
                  checkpoint_dir: str, callbacks: list[Any]) -> tuple[Any, PackedDataset, PackedCollator]:
    """The HF Trainer over packed micro-batches of ``tokens_per_step`` tokens (what ``train`` and the benchmark run)."""
    from transformers import Trainer

    pad_to = config.tokens_per_step if static_shapes(config) else None
    dataset = PackedDataset(samples, config.tokens_per_step, config.seed)
    collator = PackedCollator(tokenizer.pad_token_id, pad_to)
    trainer = Trainer(model=model, args=training_arguments(config, checkpoint_dir), train_dataset=dataset,
                      data_collator=collator, callbacks=callbacks)
    return trainer, dataset, collator


def evaluate(config: TrainConfig, model: Any, tokenizer: Any, prepared: PreparedData, pad_to: int | None,
             metrics: dict[str, Any], tracking: TrackingCallback, reports_dir: Path) -> list[Path]:
    """Validation loss/perplexity and sample generations into ``metrics`` and report files; returns the files."""
    if not prepared.validation:
        return []
    loss, tokens = validation_loss(model, prepared.validation, config.tokens_per_step, tokenizer.pad_token_id,
                                   pad_to, config.eval_batches)
    report = metrics_report(loss, metrics["train_loss"], tokens)
    metrics.update(validation_loss=loss, perplexity=report["language_modeling_metrics"]["perplexity"]["value"])
    tracking.log_final({"eval_loss": loss, "perplexity": metrics["perplexity"]}, metrics["global_step"])
    files = [write_json(reports_dir / EVALUATION_FILE, report)]
    if config.sample_generations:
        samples = sample_generations(model, tokenizer, prepared.validation_records[: config.sample_generations],
                                     config.max_new_tokens)
        files.append(write_json(reports_dir / SAMPLES_FILE, samples))
    return files


def build_manifest(config: TrainConfig, mode: str, base_digest: str, prepared: PreparedData,
                   metrics: dict[str, Any], job_name: str | None) -> Manifest:
    return Manifest(
        output_mode=mode,
        base_model_id=config.base_model_id,
        base_weights_digest=base_digest,
        base_model_package_arn=config.base_model_package_arn or None,
        dataset_name=config.dataset_name,
        dataset_digest=prepared.digest,
        dataset_records=len(prepared.train),
        validation_records=len(prepared.validation_records),
        hyperparameters=config.to_dict(),
        code_version=code_version(),
        metrics={k: float(v) for k, v in metrics.items()},
        training_job=job_name,
        created_at=datetime.now(timezone.utc).isoformat(timespec="seconds"),
    )


def train(config: TrainConfig) -> dict[str, Any]:
    """Run the whole job; returns the final metrics. Artifacts are written by rank 0 only."""
    from transformers import set_seed

    set_seed(config.seed)
    if warning := idle_gpu_warning(dict(os.environ)):
        logger.warning(warning)
    base_dir = Path(config.base_model_dir)
    if not (base_dir / "config.json").is_file():
        raise data_lib.DataError(f"{base_dir}: not a Hugging Face model folder (no config.json)")
    base_digest = folder_weights_digest(base_dir)  # fails early on a folder without weights
    tokenizer = load_tokenizer(str(base_dir))
    prepared = prepare_data(config, tokenizer)
    logger.info("data: %d training samples, %d validation samples", len(prepared.train), len(prepared.validation))

    model = add_lora(load_base_model(config), config)
    job_name = os.environ.get("TRAINING_JOB_NAME")
    with tempfile.TemporaryDirectory(prefix="loraops-") as scratch:
        checkpoint_dir = config.checkpoint_dir or str(Path(scratch) / "checkpoints")
        reports_dir = Path(config.output_data_dir or Path(scratch) / "reports")
        reports_dir.mkdir(parents=True, exist_ok=True)
        tracking = TrackingCallback(
            reports_dir,
            params=config.to_dict(),
            backends=backends_from_environment(job_name, config.experiment_name, config.mlflow_tracking_uri,
                                               config.artifact_s3_uri),
        )
        trainer, train_set, collator = build_trainer(config, model, tokenizer, prepared.train, checkpoint_dir,
                                                     [tracking])
        resume = last_checkpoint(checkpoint_dir)
        if resume:
            logger.info("resuming from %s", resume)
        result = trainer.train(resume_from_checkpoint=resume)
        metrics: dict[str, Any] = {"train_loss": float(result.training_loss), "global_step": int(result.global_step),
                                   "train_tokens": train_set.tokens}
        if not trainer.is_world_process_zero():
            return metrics

        reports = [reports_dir / METRICS_FILE]
        reports += evaluate(config, model, tokenizer, prepared, collator.pad_to, metrics, tracking, reports_dir)
        tracking.finish(reports)
        reports.append(reports_dir / LOSS_CURVE_FILE)
        write_artifacts(Path(config.model_dir), config.output_mode, model, tokenizer,
                        lambda mode: build_manifest(config, mode, base_digest, prepared, metrics, job_name),
                        reports, config.merged_shard_size)
    return metrics
