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

from loraops.manifest import MANIFEST_FILE, folder_weights_digest, recorded_base_weights, recorded_weights_digest
from loraops_serving.multi_lora import AdapterWeights

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
    recorded = recorded_weights_digest(model_dir)
    return folder_weights_digest(model_dir) if recorded is None else recorded


#: adapter_config.json fields whose non-default values change what the adapter computes beyond plain LoRA on
#: linear layers (A, B, one rank, one alpha): the engine does not implement them, so such adapters are refused.
UNSUPPORTED = {
    "use_dora": "DoRA (use_dora)",
    "rank_pattern": "per-module ranks (rank_pattern)",
    "alpha_pattern": "per-module alphas (alpha_pattern)",
    "modules_to_save": "fully trained modules (modules_to_save)",
    "lora_bias": "LoRA biases (lora_bias)",
    "fan_in_fan_out": "Conv1D layers (fan_in_fan_out)",
    "trainable_token_indices": "trainable token embeddings (trainable_token_indices)",
    "target_parameters": "LoRA on parameters (target_parameters)",
    "alora_invocation_tokens": "activated LoRA (alora_invocation_tokens)",
    "use_qalora": "QA-LoRA (use_qalora)",
    "layer_replication": "layer replication (layer_replication)",
    "use_bdlora": "BD-LoRA (use_bdlora)",
    "arrow_config": "Arrow routing (arrow_config)",
    "kasa_config": "KaSA (kasa_config)",
    "megatron_config": "Megatron layers (megatron_config)",
}


def read_adapter(name: str, folder: Path, loaded_base_digest: str, allow_unverified: bool = False) -> AdapterWeights:
    """A PEFT LoRA folder as per-module ``A``/``B``. Refused (:class:`LayoutError`, with the reason) when it uses
    a PEFT feature the engine does not implement, holds tensors other than LoRA ``A``/``B`` pairs, or is not
    proven to belong to the loaded base (its manifest must name the base's weights digest, unless
    ``allow_unverified``)."""
    config = json.loads((folder / "adapter_config.json").read_text())
    if not isinstance(config, dict):
        raise LayoutError(f"adapter {name}: adapter_config.json is not an object")
    if config.get("peft_type", "LORA") != "LORA":
        raise LayoutError(f"adapter {name}: {config.get('peft_type')} adapters are not served, only LORA")
    if used := [what for key, what in UNSUPPORTED.items() if config.get(key)]:
        raise LayoutError(f"adapter {name} uses {', '.join(used)}, which this engine does not serve")
    if config.get("bias", "none") != "none":
        raise LayoutError(f"adapter {name} trains biases (bias={config['bias']!r}), which this engine does not serve")
    digest = recorded_base_weights(folder)
    if digest and digest != loaded_base_digest:
        raise LayoutError(
            f"adapter {name} was trained on base weights {digest}; the loaded base is {loaded_base_digest}"
        )
    if not digest and not allow_unverified:
        raise LayoutError(
            f"adapter {name}: no {MANIFEST_FILE} naming its base weights, so it cannot be checked against the loaded "
            "base (LORAOPS_ALLOW_UNVERIFIED_ADAPTERS=true serves it anyway)"
        )
    weights_file = folder / "adapter_model.safetensors"
    if not weights_file.is_file():
        raise LayoutError(f"adapter {name}: no adapter_model.safetensors in {folder}")
    tensors = load_file(str(weights_file))
    rank = int(config["r"])
    alpha = float(config.get("lora_alpha", rank))
    scale = alpha / (rank**0.5) if config.get("use_rslora") else alpha / rank
    if foreign := sorted(k for k in tensors if not k.endswith((".lora_A.weight", ".lora_B.weight"))):
        raise LayoutError(
            f"adapter {name} holds tensors other than LoRA A/B pairs, which this engine does not serve: {foreign[:3]}"
        )
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
