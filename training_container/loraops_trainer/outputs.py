"""Writing the artifacts: the LoRA adapter (bf16) and/or the merged model, each with its manifest.

Everything is written into ``<model_dir>/.partial`` first and moved into place only when complete, so
a failed run leaves no half-written artifact. Layout of ``model_dir``:

- ``adapter``: the PEFT folder itself (``adapter_config.json``, ``adapter_model.safetensors``, tokenizer)
- ``merged``: the merged model folder (``config.json``, ``model-*.safetensors`` shards, tokenizer)
- ``both``: ``adapter/`` and ``merged/`` subfolders, each as above

Every artifact folder also holds ``loraops-manifest.json`` and the run's reports
(``metrics.jsonl``, ``loss_curve.png``, ``evaluation.json``, ``samples.json``).
"""

from __future__ import annotations

import logging
import shutil
from pathlib import Path
from typing import Any, Callable

import torch
from safetensors.torch import load_file, save_file

from loraops.manifest import Manifest

logger = logging.getLogger(__name__)

ADAPTER_WEIGHTS = "adapter_model.safetensors"
PARTIAL = ".partial"


def save_adapter(peft_model: Any, tokenizer: Any, folder: Path) -> None:
    """The PEFT adapter with its weights stored in bf16 (not the fp32 they trained in)."""
    peft_model.save_pretrained(str(folder), safe_serialization=True)
    weights = folder / ADAPTER_WEIGHTS
    tensors = {k: v.to(torch.bfloat16).contiguous() for k, v in load_file(str(weights)).items()}
    save_file(tensors, str(weights), metadata={"format": "pt"})
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


def copy_reports(reports: list[Path], folder: Path) -> None:
    for report in reports:
        if report.exists():
            shutil.copy2(report, folder / report.name)


def write_artifacts(
    model_dir: Path,
    output_mode: str,
    peft_model: Any,
    tokenizer: Any,
    manifest_for: Callable[[str], Manifest],
    reports: list[Path],
    shard_size: str,
) -> None:
    """Write the configured artifacts into ``model_dir``: all of them, or (on any error) nothing."""
    model_dir.mkdir(parents=True, exist_ok=True)
    partial = model_dir / PARTIAL
    shutil.rmtree(partial, ignore_errors=True)
    both = output_mode == "both"
    adapter_folder = partial if output_mode == "adapter" else partial / "adapter"
    merged_folder = partial / "merged" if both else partial
    try:
        adapter_folder.mkdir(parents=True, exist_ok=True)
        save_adapter(peft_model, tokenizer, adapter_folder)
        if output_mode in ("adapter", "both"):
            copy_reports(reports, adapter_folder)
            manifest_for("adapter").write(adapter_folder)
        if output_mode in ("merged", "both"):
            merged = merge_into_bf16_base(peft_model, adapter_folder)
            if not both:  # merged only: the adapter was a stepping stone
                shutil.rmtree(adapter_folder)
            merged_folder.mkdir(parents=True, exist_ok=True)
            save_merged(merged, tokenizer, merged_folder, shard_size)
            copy_reports(reports, merged_folder)
            manifest_for("merged").write(merged_folder)
        for item in sorted(partial.iterdir()):
            target = model_dir / item.name
            if target.is_dir():
                shutil.rmtree(target)
            elif target.exists():
                target.unlink()
            item.rename(target)
        partial.rmdir()
    except BaseException:
        shutil.rmtree(partial, ignore_errors=True)
        raise
