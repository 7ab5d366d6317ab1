"""Where the model and adapters are, what they are, and whether an adapter belongs to the loaded base.

A SageMaker endpoint mounts the model's uncompressed S3 prefix at ``/opt/ml/model`` and each additional model
data source at ``/opt/ml/additional-model-data-sources/<channel>/``; LMI's convention puts adapters under
``<model>/adapters/<name>/``. A folder with ``config.json`` is a model (merged or base); one with
``adapter_config.json`` is a PEFT adapter, named by its folder.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from safetensors.torch import load_file

from loraops.manifest import MANIFEST_FILE, folder_weights_digest
from loraops.registry import BASE_MANIFEST
from loraops_serving.multi_lora import AdapterWeights

MODEL_DIR = Path("/opt/ml/model")
ADDITIONAL_SOURCES = Path("/opt/ml/additional-model-data-sources")
PEFT_PREFIX = "base_model.model."


class LayoutError(ValueError):
    """A folder is not what it must be, or an adapter does not belong to the base."""


def is_adapter(folder: Path) -> bool:
    return (folder / "adapter_config.json").is_file()


def find_adapters(model_dir: Path, extra: list[Path] | None = None) -> dict[str, Path]:
    """Adapters under ``<model>/adapters/*/``, the additional model data sources and ``extra``, by folder name."""
    candidates = [*sorted((model_dir / "adapters").glob("*/")), *sorted(ADDITIONAL_SOURCES.glob("*/"))]
    found: dict[str, Path] = {}
    for folder in [*candidates, *(extra or [])]:
        if is_adapter(folder):
            if folder.name in found:
                raise LayoutError(f"two adapters named {folder.name}: {found[folder.name]} and {folder}")
            found[folder.name] = folder
    return found


def base_digest(model_dir: Path) -> str:
    """The weights digest of the loaded model: from the import's ``loraops-base.json`` when it lies beside the
    weights (hashing 13 GB at start-up costs a minute), else computed."""
    recorded = model_dir / BASE_MANIFEST
    if recorded.is_file():
        return json.loads(recorded.read_text())["weights_digest"]
    return folder_weights_digest(model_dir)


def read_adapter(name: str, folder: Path, loaded_base_digest: str) -> AdapterWeights:
    """A PEFT LoRA folder as per-module ``A``/``B``; refused when its manifest names another base."""
    config = json.loads((folder / "adapter_config.json").read_text())
    if config.get("peft_type", "LORA") != "LORA":
        raise LayoutError(f"adapter {name}: {config.get('peft_type')} adapters are not served, only LORA")
    manifest_path = folder / MANIFEST_FILE
    digest = ""
    if manifest_path.is_file():
        digest = json.loads(manifest_path.read_text()).get("base_weights_digest", "")
        if digest and digest != loaded_base_digest:
            raise LayoutError(
                f"adapter {name} was trained on base weights {digest}; the loaded base is {loaded_base_digest}"
            )
    weights_file = folder / "adapter_model.safetensors"
    if not weights_file.is_file():
        raise LayoutError(f"adapter {name}: no adapter_model.safetensors in {folder}")
    tensors = load_file(str(weights_file))
    rank = int(config["r"])
    alpha = float(config.get("lora_alpha", rank))
    scale = alpha / (rank**0.5) if config.get("use_rslora") else alpha / rank
    modules: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}
    for key, tensor in tensors.items():
        if not key.endswith(".lora_A.weight"):
            continue
        module = key.removeprefix(PEFT_PREFIX).removesuffix(".lora_A.weight")
        b_key = key.replace(".lora_A.weight", ".lora_B.weight")
        if b_key not in tensors:
            raise LayoutError(f"adapter {name}: {key} has no lora_B")
        modules[module] = (tensor, tensors[b_key])
    if not modules:
        raise LayoutError(f"adapter {name}: no LoRA weights in {weights_file}")
    return AdapterWeights(name, modules, scale, rank, digest, set(modules))
