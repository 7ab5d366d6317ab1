"""The auto memory profile: from the GPU memory there is and the model's shape, how many tokens a micro-batch holds
and how much activation memory to keep instead of recomputing it.

Memory (bytes) of a run is estimated as

    fixed = quantized weights + bf16 embeddings and head + LoRA (fp32 weight, gradient, two Adam moments)
            + a workspace
    peak  = fixed + T * (kept * ACTIVATION * hidden + recomputed * 2 * hidden)
            + (T * RECOMPUTE_WORKSPACE * ACTIVATION * hidden if any layer is recomputed)

for ``T`` tokens per micro-batch, ``kept`` layers that keep their activations and ``recomputed`` layers that keep only
their bf16 input and recompute the rest in the backward pass (transformers' ``activation_checkpointing`` with
``every_n_layers``). ``ACTIVATION`` (bytes per token, layer and hidden unit with all activations kept) is calibrated
on one H200: Llama-2-7B shape, NF4, LoRA r=64 on all linear layers, varlen attention, Liger kernels; 4k, 8k and 16k
tokens took 31.7, 57.0 and 107.9 GiB, i.e. 6.35 GiB per 1k tokens; ``RECOMPUTE_WORKSPACE`` from 32k tokens with
every layer recomputed (24.4 GiB).

Speed is scored as ``T / (T + STEP_OVERHEAD_TOKENS)`` (each step's fixed cost; the same H200: 14.3k tokens/s at 10k
tokens, 14.9k at 18k, no recomputation) divided by ``1 + RECOMPUTE_COST * recomputed / layers`` (recomputing every
layer was 1.37-1.43x slower there). The profile with the best score whose estimate fits
``USABLE`` of the budget wins. The estimate is a model: the benchmark reports the measured peak beside it.

:func:`apply_memory_profile` applies the choice to a run's settings (``memory_profile=auto`` on a GPU), leaving what
the user set alone.
"""

from __future__ import annotations

import dataclasses
import json
import math
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from loraops_trainer.settings import ConfigError, TrainConfig

GIB = 2**30
ACTIVATION = 49.6  # bytes per token, layer and hidden unit, activations kept
RECOMPUTE_WORKSPACE = 1.4  # x ACTIVATION: the layer being recomputed (32k tokens, all recomputed: 24.4 GiB)
STEP_OVERHEAD_TOKENS = 1024
RECOMPUTE_COST = 0.43
USABLE = 0.90  # of the budget: the allocator's fragmentation and the CUDA context (22 GiB runs planned at 92% ran out)
WORKSPACE = 1.5 * GIB
WEIGHT_BYTES = {"nf4": 0.53, "int8": 1.0, "none": 2.0}  # per parameter, blockwise scales included
#: Micro-batch sizes the profile chooses among (multiples of 2048 tokens) and the recompute spacings.
TOKEN_CHOICES = tuple(range(2048, 65536 + 1, 2048))
EVERY_N_LAYERS = (0, 4, 3, 2, 1)  # 0: no layer recomputed; n: every n-th layer


@dataclass(frozen=True)
class ModelShape:
    hidden: int
    intermediate: int
    layers: int
    heads: int
    kv_heads: int
    vocab: int

    @classmethod
    def from_folder(cls, folder: str | Path) -> ModelShape:
        config = json.loads((Path(folder) / "config.json").read_text())
        heads = config["num_attention_heads"]
        return cls(
            hidden=config["hidden_size"],
            intermediate=config["intermediate_size"],
            layers=config["num_hidden_layers"],
            heads=heads,
            kv_heads=config.get("num_key_value_heads", heads),
            vocab=config["vocab_size"],
        )

    @property
    def kv_width(self) -> int:
        return self.hidden * self.kv_heads // self.heads

    @property
    def layer_parameters(self) -> int:
        attention = 2 * self.hidden * self.hidden + 2 * self.hidden * self.kv_width
        return attention + 3 * self.hidden * self.intermediate

    def lora_parameters(self, rank: int) -> int:
        """LoRA on every linear layer of every decoder layer: r * (in + out) each."""
        h, kv, i = self.hidden, self.kv_width, self.intermediate
        per_layer = rank * (2 * (h + h) + 2 * (h + kv) + 2 * (h + i) + (i + h))
        return per_layer * self.layers


@dataclass(frozen=True)
class MemoryProfile:
    """What the auto profile chose, and why (logged and recorded in the manifest)."""

    tokens_per_step: int
    recompute_every_n_layers: int  # 0: none
    recomputed_layers: int
    estimated_peak_gib: float
    budget_gib: float
    reason: str

    @property
    def activation_checkpointing(self) -> bool:
        return self.recompute_every_n_layers > 0

    def as_dict(self) -> dict:
        return asdict(self)


def recomputed_layers(layers: int, every_n: int) -> int:
    """Layers transformers checkpoints with ``every_n_layers=n`` (layer indices divisible by n)."""
    return 0 if every_n == 0 else math.ceil(layers / every_n)


def estimate_peak_bytes(
    shape: ModelShape, tokens: int, every_n: int, quantization: str = "nf4", lora_rank: int = 64
) -> float:
    weights = shape.layers * shape.layer_parameters * WEIGHT_BYTES[quantization] + 2 * shape.vocab * shape.hidden * 2
    fixed = weights + shape.lora_parameters(lora_rank) * 16 + WORKSPACE
    recomputed = recomputed_layers(shape.layers, every_n)
    kept = shape.layers - recomputed
    per_token = kept * ACTIVATION * shape.hidden + recomputed * 2 * shape.hidden
    if recomputed:
        per_token += RECOMPUTE_WORKSPACE * ACTIVATION * shape.hidden  # the layer being recomputed, meanwhile
    return fixed + tokens * per_token


def speed_score(shape: ModelShape, tokens: int, every_n: int) -> float:
    recomputed = recomputed_layers(shape.layers, every_n)
    return tokens / (tokens + STEP_OVERHEAD_TOKENS) / (1 + RECOMPUTE_COST * recomputed / shape.layers)


def choose(
    shape: ModelShape,
    budget_bytes: float,
    *,
    min_tokens: int,
    max_tokens: int = TOKEN_CHOICES[-1],
    quantization: str = "nf4",
    lora_rank: int = 64,
    every_n_choices: tuple[int, ...] = EVERY_N_LAYERS,
) -> MemoryProfile:
    """The fastest (tokens, recompute) pair whose estimate fits ``USABLE * budget_bytes``; tokens between
    ``min_tokens`` (the longest sample) and ``max_tokens`` (both: that size), recompute among ``every_n_choices``."""
    usable = USABLE * budget_bytes
    sizes = [t for t in TOKEN_CHOICES if min_tokens <= t <= max_tokens] or [min_tokens]
    options = [
        (speed_score(shape, tokens, n), tokens, n, estimate_peak_bytes(shape, tokens, n, quantization, lora_rank))
        for tokens in sizes
        for n in every_n_choices
    ]
    fitting = [option for option in options if option[3] <= usable]
    if not fitting:
        smallest = min(option[3] for option in options)
        raise MemoryError(
            f"no micro-batch of {min_tokens}-{max_tokens} tokens fits {budget_bytes / GIB:.1f} GiB (the smallest "
            f"profile needs about {smallest / GIB:.1f} GiB); lower max_seq_length or use a larger GPU"
        )
    score, tokens, every_n, peak = max(fitting, key=lambda o: (o[0], -o[3]))
    recomputed = recomputed_layers(shape.layers, every_n)
    what = "no layer recomputed" if every_n == 0 else f"{recomputed} of {shape.layers} layers recomputed"
    reason = (
        f"{budget_bytes / GIB:.0f} GiB budget: {tokens}-token micro-batches with {what} are estimated at "
        f"{peak / GIB:.1f} GiB (<= {USABLE:.0%} of the budget) and score best ({score:.3f}) among "
        f"{len(fitting)} profiles that fit"
    )
    return MemoryProfile(tokens, every_n, recomputed, round(peak / GIB, 1), round(budget_bytes / GIB, 1), reason)


#: Names under which a user sets recomputation explicitly (the profile then leaves it alone): transformers'
#: ``activation_checkpointing`` and its deprecated alias ``gradient_checkpointing``.
CHECKPOINTING_NAMES = {"activation_checkpointing", "gradient_checkpointing"}


def recomputes(training: dict[str, Any]) -> bool:
    """Whether TrainingArguments' values turn recomputation on, read as transformers reads them:
    ``activation_checkpointing``, or where that is unset (None) its deprecated alias ``gradient_checkpointing``."""
    value = training.get("activation_checkpointing")
    return bool(training.get("gradient_checkpointing") if value is None else value)


def gpu_memory_bytes() -> int:
    """Total memory of this process's GPU (0 without CUDA)."""
    import torch

    return (
        torch.cuda.get_device_properties(torch.cuda.current_device()).total_memory if torch.cuda.is_available() else 0
    )


def apply_memory_profile(
    config: TrainConfig, training: dict[str, Any], given: set[str], gpu_bytes: int
) -> tuple[TrainConfig, dict[str, Any], MemoryProfile | None]:
    """With ``memory_profile=auto`` on a GPU (``gpu_bytes`` > 0): the profile's micro-batch size and recomputation
    for whatever of them the user did not set. Returns the settings and the profile (None when it did not run)."""
    if config.memory_profile != "auto" or gpu_bytes <= 0:
        return config, training, None
    budget = config.memory_budget_gib * 2**30 if config.memory_budget_gib else gpu_bytes
    fixed_tokens = config.tokens_per_step if "tokens_per_step" in given else None
    fixed_recompute = given & CHECKPOINTING_NAMES
    every_n = ((1,) if recomputes(training) else (0,)) if fixed_recompute else EVERY_N_LAYERS
    try:
        profile = choose(
            ModelShape.from_folder(config.base_model_dir),
            budget,
            min_tokens=fixed_tokens or config.max_seq_length,
            max_tokens=fixed_tokens or 32768,
            quantization=config.quantization,
            lora_rank=config.lora_r,
            every_n_choices=every_n,
        )
    except MemoryError as error:
        raise ConfigError(f"hyperparameter 'memory_budget_gib': {error}") from None
    except (OSError, KeyError, ValueError) as error:
        raise ConfigError(f"hyperparameter 'base_model_dir': cannot read the model's shape ({error})") from None
    config = dataclasses.replace(config, tokens_per_step=profile.tokens_per_step)
    if not fixed_recompute:
        training = {**training, "activation_checkpointing": profile.activation_checkpointing}
    return config, training, profile
