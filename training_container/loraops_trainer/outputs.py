"""Writing the artifacts into a staging folder: the LoRA adapter (bf16) and/or the merged model.

Layout (what :mod:`loraops_trainer.publish` then publishes as the model folder):

- adapter only: the PEFT folder itself (``adapter_config.json``, ``adapter_model.safetensors``, tokenizer)
- merged only: the merged model folder (``config.json``, ``model-*.safetensors`` shards, tokenizer)
- both: ``adapter/`` and ``merged/`` subfolders, each as above

``write_artifacts`` returns the folder of each output mode; the caller adds reports and manifests.
"""

from __future__ import annotations

import json
import logging
import shutil
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file

from loraops.naming import OutputMode

logger = logging.getLogger(__name__)

ADAPTER_WEIGHTS = "adapter_model.safetensors"
ADAPTER_CONFIG = "adapter_config.json"


def artifact_folders(root: Path, modes: tuple[OutputMode, ...]) -> dict[OutputMode, Path]:
    """Where each mode's artifact lies under ``root``: the root itself for one mode, a subfolder each for two."""
    if len(modes) == 1:
        return {modes[0]: root}
    return {mode: root / mode.value for mode in modes}


def save_adapter(peft_model: Any, tokenizer: Any, folder: Path, base_model_id: str) -> None:
    """The PEFT adapter with bf16 weights, naming the base by its Hugging Face id (never a local path) in its config
    and its model card (``README.md``)."""
    # PEFT names the base by the adapter config's path (adapter_config.json), the model config's (the card's
    # base_model) and the model's own (the card's base_model:adapter tag)
    base = peft_model.get_base_model()
    configs = [
        (peft_model.peft_config[peft_model.active_adapter], "base_model_name_or_path"),
        (base.config, "name_or_path"),
        (base, "name_or_path"),
    ]
    local = [getattr(config, name) for config, name in configs]
    try:
        for config, name in configs:
            setattr(config, name, base_model_id)
        # No embedding layer is ever trained or resized, so none is saved: peft's default ("auto") would look the
        # base up on the Hub (a network call from a network-isolated job) and, where the vocabulary there differed
        # from the local base's, save the whole embedding matrix into the adapter.
        peft_model.save_pretrained(str(folder), safe_serialization=True, save_embedding_layers=False)
    finally:
        for (config, name), value in zip(configs, local, strict=True):
            setattr(config, name, value)
    weights = folder / ADAPTER_WEIGHTS
    tensors = {k: v.to(torch.bfloat16).contiguous() for k, v in load_file(str(weights)).items()}
    save_file(tensors, str(weights), metadata={"format": "pt"})
    config_path = folder / ADAPTER_CONFIG
    adapter_config = json.loads(config_path.read_text())
    adapter_config["base_model_name_or_path"] = base_model_id
    config_path.write_text(json.dumps(adapter_config, indent=2, sort_keys=True) + "\n")
    tokenizer.save_pretrained(str(folder))


def merge_into_bf16_base(peft_model: Any, adapter_folder: Path) -> Any:
    """Base de-quantized to bf16, then the saved adapter merged into it (never into 4-bit weights)."""
    from peft import PeftModel

    base = peft_model.unload()  # the base model without LoRA layers (still quantized if it was)
    if getattr(base, "is_quantized", False) or getattr(base, "hf_quantizer", None) is not None:
        base = base.dequantize()
    base = base.to(torch.bfloat16)
    for attribute in ("quantization_config", "_pre_quantization_dtype"):
        if hasattr(base.config, attribute):
            delattr(base.config, attribute)
    merged = PeftModel.from_pretrained(base, str(adapter_folder), torch_device=str(next(base.parameters()).device))
    merged = merged.merge_and_unload()
    merged.config.use_cache = True
    return merged


def save_merged(merged: Any, tokenizer: Any, folder: Path, shard_size: str) -> None:
    merged.save_pretrained(str(folder), safe_serialization=True, max_shard_size=shard_size)
    tokenizer.save_pretrained(str(folder))


def write_artifacts(
    staging: Path,
    modes: tuple[OutputMode, ...],
    peft_model: Any,
    tokenizer: Any,
    *,
    base_model_id: str,
    shard_size: str,
) -> dict[OutputMode, Path]:
    """Write each mode's artifact under ``staging``; returns mode -> folder. Merging consumes the model."""
    folders = artifact_folders(staging, modes)
    # The merge starts from the saved bf16 adapter, so the adapter is written first even for merged-only runs.
    adapter_folder = folders.get(OutputMode.ADAPTER, staging / ".adapter-for-merge")
    adapter_folder.mkdir(parents=True, exist_ok=True)
    save_adapter(peft_model, tokenizer, adapter_folder, base_model_id)
    if OutputMode.MERGED in folders:
        merged = merge_into_bf16_base(peft_model, adapter_folder)
        if OutputMode.ADAPTER not in folders:
            shutil.rmtree(adapter_folder)
        folders[OutputMode.MERGED].mkdir(parents=True, exist_ok=True)
        save_merged(merged, tokenizer, folders[OutputMode.MERGED], shard_size)
    return folders


def copy_reports(reports: list[Path], folder: Path) -> None:
    for report in reports:
        if report.exists():
            shutil.copy2(report, folder / report.name)
