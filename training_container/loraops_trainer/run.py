"""One training run end to end; the data flows one way:

settings -> checks (before anything loads) -> data -> QLoRA training -> evaluation -> artifacts in staging
-> manifests -> one publish into the model folder.
"""

from __future__ import annotations

import json
import logging
import math
import os
import tempfile
from pathlib import Path
from typing import Any

import torch

from loraops_trainer import data as data_lib
from loraops_trainer.accounting import (
    LogAtSaveAndEnd,
    checkpoint_step,
    planned_steps,
    restore_final_checkpoint,
    run_train_loss,
    trained_amount,
)
from loraops_trainer.evaluation import evaluate
from loraops_trainer.guards import (
    NonFiniteGuard,
    TerminationGuard,
    TrainingFault,
    check_finite_weights,
    claim_checkpoint_dir,
    run_fingerprint,
    weights_digest,
)
from loraops_trainer.inputs import check_inputs, load_tokenizer, prepare_data
from loraops_trainer.model import add_lora, load_base_model, uses_boundaries
from loraops_trainer.outputs import copy_reports, write_artifacts
from loraops_trainer.packing import PackedCollator, PackedDataset
from loraops_trainer.publish import staged
from loraops_trainer.run_manifest import build_manifest
from loraops_trainer.settings import Settings, TrainConfig
from loraops_trainer.tracking import LOSS_CURVE_FILE, METRICS_FILE, TrackingCallback, backends_from_environment

logger = logging.getLogger(__name__)


def static_shapes(config: TrainConfig) -> bool:
    """Pad rows to the budget only when asked (fixed shapes for compiled kernels); no kept attention path needs it."""
    return config.static_shapes == "on"


def idle_gpu_warning(environ: dict[str, str]) -> str | None:
    """A message when SageMaker gave this job more GPUs (``SM_NUM_GPUS``) than processes were started."""
    gpus = int(environ.get("SM_NUM_GPUS", "0") or 0)
    processes = int(environ.get("LOCAL_WORLD_SIZE", "1") or 1)
    if gpus > processes:
        return (
            f"SM_NUM_GPUS={gpus} but {processes} training process(es) on this host: {gpus - processes} GPU(s) "
            "idle; launch with torchrun (SageMaker distribution torch_distributed) to use them all"
        )
    return None


def cap_gpu_memory(budget_gib: float) -> None:
    """Hold the run to ``budget_gib`` of the GPU (an allocation beyond it fails as out of memory)."""
    if budget_gib and torch.cuda.is_available():
        total = torch.cuda.get_device_properties(torch.cuda.current_device()).total_memory
        torch.cuda.set_per_process_memory_fraction(min(1.0, budget_gib * 2**30 / total))


def last_checkpoint(checkpoint_dir: str) -> str | None:
    """The newest *complete* checkpoint. Kept rather than transformers' ``get_last_checkpoint``, which takes
    the highest number even when that folder was cut off mid-save (the Trainer writes ``trainer_state.json``
    last, so a folder without a readable one is skipped)."""
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


def build_trainer(
    settings: Settings, model: Any, tokenizer: Any, samples: list[data_lib.Sample], callbacks: list[Any]
) -> tuple[Any, PackedDataset, PackedCollator]:
    """The HF Trainer over packed micro-batches of ``tokens_per_step`` tokens (what ``train`` and the benchmark run)."""
    from transformers import Trainer

    config = settings.config
    pad_to = config.tokens_per_step if static_shapes(config) else None
    dataset = PackedDataset(samples, config.tokens_per_step, settings.training.seed)
    collator = PackedCollator(tokenizer.pad_token_id, pad_to, boundaries=uses_boundaries(config))
    trainer = Trainer(
        model=model, args=settings.training, train_dataset=dataset, data_collator=collator, callbacks=callbacks
    )
    return trainer, dataset, collator


def train(settings: Settings) -> dict[str, Any]:
    """Run the whole job; returns the final metrics. Artifacts are published by rank 0 only."""
    from transformers import set_seed

    config = settings.config
    set_seed(settings.training.seed)
    if settings.memory_profile is not None:
        logger.info("memory profile: %s", settings.memory_profile.reason)
    cap_gpu_memory(config.memory_budget_gib)
    if warning := idle_gpu_warning(dict(os.environ)):
        logger.warning(warning)
    world = settings.training.world_size
    logger.info(f"data parallel: {world} processes" if world > 1 else "one training process (no data parallelism)")
    base_digest = check_inputs(config)
    tokenizer = load_tokenizer(config.base_model_dir)
    prepared = prepare_data(config, tokenizer, settings.training.seed)
    logger.info("data: %s", json.dumps(prepared.summary()))
    checkpoint_dir = Path(config.checkpoint_dir)
    resume = last_checkpoint(str(checkpoint_dir))
    fingerprint = run_fingerprint(settings.hyperparameters, base_digest, prepared.digest)
    if settings.training.process_index == 0:
        claim_checkpoint_dir(checkpoint_dir, fingerprint, has_checkpoints=resume is not None)

    model = add_lora(load_base_model(config), config)
    job_name = os.environ.get("TRAINING_JOB_NAME")
    termination = TerminationGuard().install()
    try:
        with tempfile.TemporaryDirectory(prefix="loraops-") as scratch:
            reports_dir = Path(config.output_data_dir or Path(scratch) / "reports")
            reports_dir.mkdir(parents=True, exist_ok=True)
            tracking = TrackingCallback(
                reports_dir,
                params=settings.hyperparameters,
                backends=backends_from_environment(
                    job_name, config.experiment_name, config.mlflow_tracking_uri, config.artifact_s3_uri
                ),
            )
            nonfinite = NonFiniteGuard(config.max_nonfinite_steps)
            trainer, train_set, collator = build_trainer(
                settings,
                model,
                tokenizer,
                prepared.train.samples,
                [tracking, nonfinite, termination, LogAtSaveAndEnd()],
            )
            if resume and checkpoint_step(resume) >= planned_steps(trainer):
                logger.info("resuming from %s: it holds the run's last step, nothing left to train", resume)
                restore_final_checkpoint(trainer, resume)
                tracking.on_train_begin(trainer.args, trainer.state, trainer.control)  # the run's tracking still starts
            else:
                if resume:
                    logger.info("resuming from %s", resume)
                trainer.train(resume_from_checkpoint=resume)
            if termination.requested:
                raise TrainingFault(
                    f"stopped by SIGTERM at step {trainer.state.global_step}; checkpoint saved in "
                    f"{checkpoint_dir} for resume; nothing was published"
                )
            check_finite_weights(model)
            global_step = int(trainer.state.global_step)
            samples, tokens = trained_amount(
                train_set, settings.training.world_size, settings.training.gradient_accumulation_steps, global_step
            )
            metrics: dict[str, Any] = {
                "train_loss": run_train_loss(trainer.state.log_history),
                "global_step": global_step,
                "train_samples": samples,
                "train_tokens": tokens,
                "skipped_nonfinite_steps": len(nonfinite.skipped),
            }
            if not math.isfinite(metrics["train_loss"]):
                raise TrainingFault("no finite training loss was logged: the run diverged; nothing was published")
            if torch.cuda.is_available():
                metrics["peak_gpu_memory_gib"] = torch.cuda.max_memory_reserved() / 2**30
            logger.info(
                "rank %d trainable weights %s, peak GPU memory %.2f GiB",
                settings.training.process_index,
                weights_digest(model),
                metrics.get("peak_gpu_memory_gib", 0.0),
            )
            if not trainer.is_world_process_zero():
                return metrics
            reports = [reports_dir / METRICS_FILE]
            reports += evaluate(config, model, tokenizer, prepared, collator, metrics, tracking, reports_dir)
            tracking.finish(reports)
            reports.append(reports_dir / LOSS_CURVE_FILE)
            with staged(Path(config.model_dir)) as staging:
                folders = write_artifacts(
                    staging,
                    config.output_modes,
                    model,
                    tokenizer,
                    base_model_id=config.base_model_id,
                    shard_size=config.merged_shard_size,
                )
                for mode, folder in folders.items():
                    copy_reports(reports, folder)
                    build_manifest(settings, mode, base_digest, prepared, metrics, job_name).write(folder)
    finally:
        termination.uninstall()
    return metrics
