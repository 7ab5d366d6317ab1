"""Saving an adapter never looks the base up on the Hub and never saves embedding layers."""

from __future__ import annotations

import warnings

from safetensors import safe_open


def test_saving_an_adapter_makes_no_hub_lookup_and_saves_only_lora_tensors(tiny_base, tokenizer, tmp_path):
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    from loraops_trainer.outputs import ADAPTER_WEIGHTS, save_adapter

    model = get_peft_model(
        AutoModelForCausalLM.from_pretrained(str(tiny_base)), LoraConfig(r=4, target_modules=["q_proj", "v_proj"])
    )
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        # The base's Hub id, as the job names it: peft's default would try to fetch its config.json.
        save_adapter(model, tokenizer, tmp_path, "meta-llama/Llama-2-7b-hf")
    lookups = [str(w.message) for w in caught if "config" in str(w.message) and "meta-llama" in str(w.message)]
    assert lookups == []
    with safe_open(str(tmp_path / ADAPTER_WEIGHTS), "pt") as weights:
        names = list(weights.keys())
    assert names and all(".lora_A." in n or ".lora_B." in n for n in names), names
