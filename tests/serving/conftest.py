"""Two tiny LoRA adapters of the tiny base (built here with peft, random B so they change the output), their
manifests naming the base's weights digest, and the merged model of the first."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from loraops.manifest import folder_weights_digest
from tests.helpers import adapter_manifest


def _adapter(tiny_base: Path, out: Path, seed: int, **lora) -> Path:
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_pretrained(tiny_base, dtype=torch.float32)
    peft_model = get_peft_model(model, LoraConfig(init_lora_weights=False, lora_dropout=0.0, **lora))
    for name, parameter in peft_model.named_parameters():  # big enough to change greedy choices
        if "lora_B" in name:
            parameter.data.normal_(0, 0.5)
    peft_model.save_pretrained(out)
    adapter_manifest(folder_weights_digest(tiny_base)).write(out)
    return out


@pytest.fixture(scope="session")
def adapters(tiny_base, tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("adapters")
    return {
        "alpha": _adapter(tiny_base, root / "alpha", 1, r=8, lora_alpha=16, target_modules=["q_proj", "v_proj"]),
        "beta": _adapter(tiny_base, root / "beta", 2, r=4, lora_alpha=8, target_modules="all-linear"),
    }


@pytest.fixture(scope="session")
def merged_alpha(tiny_base, adapters, tmp_path_factory) -> Path:
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(tiny_base, dtype=torch.float32)
    merged = PeftModel.from_pretrained(model, adapters["alpha"]).merge_and_unload()
    out = tmp_path_factory.mktemp("merged-alpha")
    merged.save_pretrained(out)
    AutoTokenizer.from_pretrained(tiny_base).save_pretrained(out)
    return out


@pytest.fixture(scope="session")
def engine(tiny_base, adapters):
    from loraops_serving.engine import Engine
    from loraops_serving.settings import ServingSettings

    return Engine(tiny_base, ServingSettings(max_resident_adapters=2), list(adapters.values()))
