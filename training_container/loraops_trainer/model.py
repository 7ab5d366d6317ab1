"""Base model loading (NF4 / int8 / full precision) and LoRA wrapping."""

from __future__ import annotations

import logging
from typing import Any

import torch

from loraops_trainer import attention as packed_attention
from loraops_trainer.settings import ConfigError, TrainConfig

logger = logging.getLogger(__name__)


def compute_dtype(config: TrainConfig) -> torch.dtype:
    """bf16 on CUDA; float32 on CPU unless asked (keeps CPU tests exact)."""
    if config.dtype == "auto":
        return torch.bfloat16 if torch.cuda.is_available() else torch.float32
    return getattr(torch, config.dtype)


def attention_implementation(config: TrainConfig) -> str:
    """Variable-length flash attention over packed samples on CUDA; sdpa (packed mask) elsewhere."""
    if config.attention == "packed_varlen":
        return packed_attention.NAME
    if config.attention != "auto":
        return config.attention
    return packed_attention.NAME if torch.cuda.is_available() else "sdpa"


def uses_boundaries(config: TrainConfig) -> bool:
    """Whether batches must carry their samples' boundaries (the varlen attention path reads them)."""
    return attention_implementation(config) == packed_attention.NAME


def fused_kernels_enabled(config: TrainConfig) -> bool:
    """Liger kernels (Triton; applied by the Trainer through ``use_liger_kernel``) when asked, or by default
    on CUDA when the package is installed."""
    if config.fused_kernels == "off":
        return False
    try:
        import liger_kernel  # noqa: F401
    except ImportError:
        if config.fused_kernels == "on":
            raise ConfigError("hyperparameter 'fused_kernels': 'on' needs the liger-kernel package") from None
        return False
    return config.fused_kernels == "on" or torch.cuda.is_available()


def quantization_config(config: TrainConfig) -> Any:
    from transformers import BitsAndBytesConfig

    if config.quantization == "nf4":
        return BitsAndBytesConfig(
            load_in_4bit=True,
            bnb_4bit_quant_type="nf4",
            bnb_4bit_use_double_quant=config.double_quant,
            bnb_4bit_compute_dtype=compute_dtype(config),
            bnb_4bit_quant_storage=torch.uint8,
        )
    if config.quantization == "int8":
        return BitsAndBytesConfig(load_in_8bit=True)
    return None


def load_base_model(config: TrainConfig) -> Any:
    """The base model, quantized as configured, frozen, ready for LoRA."""
    from transformers import AutoModelForCausalLM

    device_map = {"": torch.cuda.current_device()} if torch.cuda.is_available() else None
    attention = attention_implementation(config)
    if attention == packed_attention.NAME:
        packed_attention.register()
    model = AutoModelForCausalLM.from_pretrained(
        config.base_model_dir,
        dtype=compute_dtype(config),
        quantization_config=quantization_config(config),
        attn_implementation=attention,
        device_map=device_map,
    )
    if config.quantization == "nf4" and not torch.cuda.is_available():
        keep_cpu_4bit_layout(model)
    model.config.use_cache = False
    for parameter in model.parameters():
        parameter.requires_grad_(False)
    return model


def keep_cpu_4bit_layout(model: Any) -> None:
    """bitsandbytes on CPUs with AVX512-BF16 repacks a Linear4bit's weights on its first no-grad eval forward:
    that repack needs out_features divisible by 32 (other shapes crash at evaluation) and, once done, LoRA
    gradients come out wrong. Turning it off keeps the one layout every shape trains, evaluates and merges in."""
    import bitsandbytes as bnb

    for module in model.modules():
        if isinstance(module, bnb.nn.Linear4bit):
            module.support_avx512bf16_for_cpu = False


def check_target_modules(config: TrainConfig) -> None:
    """Refuse LoRA target names the base model does not have, from its config alone (no weights loaded)."""
    from accelerate import init_empty_weights
    from transformers import AutoConfig, AutoModelForCausalLM

    if config.target_modules == "all-linear":
        return
    with init_empty_weights():
        model = AutoModelForCausalLM.from_config(AutoConfig.from_pretrained(config.base_model_dir))
    present = {name.rsplit(".", 1)[-1] for name, module in model.named_modules() if isinstance(module, torch.nn.Linear)}
    missing = sorted(set(config.target_modules) - present)
    if missing:
        raise ConfigError(
            f"hyperparameter 'lora_target_modules': the base model has no linear layer named "
            f"{missing}; its linear layers are {sorted(present)}"
        )


def add_lora(model: Any, config: TrainConfig) -> Any:
    """Wrap ``model`` with trainable LoRA adapters (fp32 master weights) on the target modules."""
    from peft import LoraConfig, get_peft_model

    lora = LoraConfig(
        r=config.lora_r,
        lora_alpha=config.lora_alpha,
        lora_dropout=config.lora_dropout,
        target_modules=config.target_modules,
        bias="none",
        task_type="CAUSAL_LM",
    )
    peft_model = get_peft_model(model, lora)
    # bitsandbytes on CPUs with AVX512-BF16 repacks 4-bit weights on a first no-grad eval forward, after
    # which LoRA gradients come out wrong: be in train mode before any forward.
    peft_model.train()
    trainable, total = peft_model.get_nb_trainable_parameters()
    logger.info("LoRA: %d trainable of %d parameters (%.3f%%)", trainable, total, 100 * trainable / total)
    return peft_model
