"""The 4-bit path on CUDA (skipped without a GPU; run on the device with `pytest -m gpu`)."""

from __future__ import annotations

import json

import pytest
import torch

from tests.training.conftest import DOLLY, fast_args, run_train

pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")]

SMALL = dict(hidden_size=512, intermediate_size=1024, num_hidden_layers=2, num_attention_heads=8,
             num_key_value_heads=8, max_position_embeddings=2048, vocab_size=2048)


def test_nf4_training_and_merge_on_cuda(tmp_path):
    from loraops_trainer.synthetic_base import build_base_model, dolly_texts

    base = build_base_model(tmp_path / "base", dolly_texts(DOLLY), SMALL)
    out = tmp_path / "out"
    result = run_train(fast_args(base, out, quantization="nf4", output_mode="both", tokens_per_step=2048,
                                 max_seq_length=512, max_steps=8, lora_r=16, gradient_checkpointing="true",
                                 learning_rate=1e-2))
    assert result.returncode == 0, result.stderr[-4000:]
    metrics = json.loads(result.stdout.strip().splitlines()[-1])["metrics"]
    assert metrics["global_step"] == 8

    assert_nf4_merge_is_faithful(base, out, "cuda")


def assert_nf4_merge_is_faithful(base, out, device: str) -> None:
    """Load the base as NF4 (as training did), de-quantize it, and compare the merged output against it."""
    from transformers import AutoModelForCausalLM, BitsAndBytesConfig

    quant = BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=True,
                               bnb_4bit_compute_dtype=torch.float32)
    device_map = {"": 0} if device == "cuda" else None
    nf4 = AutoModelForCausalLM.from_pretrained(str(base), quantization_config=quant, device_map=device_map)
    assert any(type(m).__name__ == "Linear4bit" for m in nf4.modules())
    assert_merged_equals_base_plus_adapter(nf4.dequantize().float(), out, device)


def assert_merged_equals_base_plus_adapter(base_model, out, device: str) -> None:
    """Merged logits match base + unmerged adapter up to bf16 storage rounding, and the adapter matters."""
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    ids = torch.randint(3, base_model.config.vocab_size, (2, 48), device=device)
    with torch.no_grad():
        base_logits = base_model(input_ids=ids).logits
        with_adapter = PeftModel.from_pretrained(base_model, str(out / "adapter")).eval()
        expected = with_adapter(input_ids=ids).logits
        merged = AutoModelForCausalLM.from_pretrained(str(out / "merged"), dtype=torch.float32).to(device).eval()
        actual = merged(input_ids=ids).logits
    assert "quantization_config" not in merged.config.to_dict()
    effect = (expected - base_logits).abs().max().item()
    error = (expected - actual).abs().max().item()
    assert error < 0.1 * effect, f"merge error {error} vs adapter effect {effect}"


def test_packed_varlen_attention_matches_padded_loss_on_cuda(tmp_path):
    """Packed row through varlen flash attention == the same samples padded, through SDPA."""
    from loraops_trainer.config import build_config
    from loraops_trainer.data import read_records, tokenize
    from loraops_trainer.model import load_base_model
    from loraops_trainer.packing import PackedCollator, pad_batch
    from loraops_trainer.run import load_tokenizer
    from loraops_trainer.synthetic_base import build_base_model, dolly_texts

    base = build_base_model(tmp_path / "base", dolly_texts(DOLLY), SMALL)
    tokenizer = load_tokenizer(str(base))
    samples = tokenize(read_records(DOLLY)[:12], tokenizer, 512)
    losses = {}
    for attention in ("packed_varlen", "sdpa"):
        config = build_config(dict(base_model_dir=str(base), train_path=str(DOLLY), model_dir=str(tmp_path),
                                   quantization="none", dtype="float32" if attention == "sdpa" else "bfloat16",
                                   attention=attention))
        model = load_base_model(config)
        batch = PackedCollator(tokenizer.pad_token_id)([samples]) if attention != "sdpa" else \
            pad_batch(samples, tokenizer.pad_token_id)
        with torch.no_grad():
            losses[attention] = model(**{k: v.cuda() for k, v in batch.items()}).loss.item()
    assert abs(losses["packed_varlen"] - losses["sdpa"]) < 2e-2, losses
