"""transformers' ``TrainingArguments`` as loraops uses them: its defaults (a QLoRA recipe), the arguments it sets
from its own settings (refused as hyperparameters) and those the manifest records."""

from __future__ import annotations

import os
from typing import Any

import torch

from loraops_trainer.model import fused_kernels_enabled
from loraops_trainer.settings import TrainConfig

#: loraops' defaults for transformers' TrainingArguments (a QLoRA recipe, not HF's generic defaults).
TRAINING_DEFAULTS: dict[str, Any] = {
    "learning_rate": 2e-4,
    "num_train_epochs": 1.0,
    "lr_scheduler_type": "cosine",
    "max_grad_norm": 0.3,
    "logging_steps": 10,
    "save_steps": 200,
    "save_total_limit": 2,
    "activation_checkpointing": True,
    "seed": 42,
    "ddp_find_unused_parameters": False,
    "disable_tqdm": True,
}
#: TrainingArguments that loraops sets from its own settings; as hyperparameters they are refused, with the
#: setting to use instead.
DERIVED_TRAINING_ARGUMENTS = {
    "output_dir": "checkpoint_dir",
    "per_device_train_batch_size": "tokens_per_step (one item is one packed micro-batch)",
    "bf16": "dtype",
    "fp16": "dtype",
    "use_cpu": "nothing (chosen from the hardware)",
    "ddp_backend": "nothing (gloo on CPU, NCCL on GPUs)",
    "use_liger_kernel": "fused_kernels",
    "liger_kernel_config": "fused_kernels",
    "report_to": "experiment_name / mlflow_tracking_uri",
    "remove_unused_columns": "nothing (the packed batches need every column)",
    "gradient_checkpointing_kwargs": "memory_profile (non-reentrant; every_n_layers from the profile)",
    "activation_checkpointing_kwargs": "memory_profile (non-reentrant; every_n_layers from the profile)",
    "save_strategy": "save_steps",
    "eval_strategy": "validation_path / validation_fraction (evaluated once after training)",
    "logging_nan_inf_filter": "max_nonfinite_steps",
    "train_sampling_strategy": "seed (the packed micro-batches are shuffled once, the same for any process count)",
}
#: What the manifest records of TrainingArguments besides whatever the user set.
RECORDED_TRAINING_ARGUMENTS = (
    *TRAINING_DEFAULTS,
    "optim",
    "warmup_steps",
    "weight_decay",
    "gradient_accumulation_steps",
    "max_steps",
)


def derived_training_arguments(config: TrainConfig, every_n_layers: int = 1) -> dict[str, Any]:
    """The TrainingArguments loraops sets itself (see :data:`DERIVED_TRAINING_ARGUMENTS`)."""
    cuda = torch.cuda.is_available()
    return {
        "output_dir": config.checkpoint_dir,
        "per_device_train_batch_size": 1,
        "bf16": cuda and config.dtype in ("auto", "bfloat16"),
        "fp16": False,
        # Without use_cpu, accelerate stays at DistributedType.NO under torchrun on CPU and each rank trains
        # its own copy; with it, gloo DDP keeps the ranks identical.
        "use_cpu": not cuda,
        "ddp_backend": "gloo" if not cuda and int(os.environ.get("WORLD_SIZE", "1")) > 1 else None,
        "use_liger_kernel": fused_kernels_enabled(config),
        "liger_kernel_config": {
            "rope": True,
            "rms_norm": True,
            "swiglu": True,
            "cross_entropy": False,
            "fused_linear_cross_entropy": True,
        },
        "report_to": "none",  # tracking callbacks are added by loraops_trainer.tracking (fail-safe)
        "remove_unused_columns": False,
        "activation_checkpointing_kwargs": {"use_reentrant": False, "every_n_layers": every_n_layers},
        "save_strategy": "steps",
        "eval_strategy": "no",
        "logging_nan_inf_filter": False,  # a NaN loss must be seen (guards.py), not averaged away
        "train_sampling_strategy": "sequential",
    }
