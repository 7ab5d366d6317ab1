"""The 4-bit path on CUDA (skipped without a GPU; run on the device with `pytest -m gpu`)."""

from __future__ import annotations

import json

import pytest
import torch

from tests.helpers import DOLLY, assert_nf4_merge_is_faithful, fast_args, run_train

pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")]


def test_nf4_training_and_merge_on_cuda(tmp_path):
    from loraops_trainer.synthetic_base import SMALL, build_base_model, dolly_texts

    base = build_base_model(tmp_path / "base", dolly_texts(DOLLY), SMALL)
    out = tmp_path / "out"
    result = run_train(
        fast_args(
            base,
            out,
            quantization="nf4",
            output_mode="both",
            tokens_per_step=2048,
            max_seq_length=512,
            max_steps=8,
            lora_r=16,
            activation_checkpointing="true",
            learning_rate=1e-2,
        )
    )
    assert result.returncode == 0, result.stderr[-4000:]
    metrics = json.loads(result.stdout.strip().splitlines()[-1])["metrics"]
    assert metrics["global_step"] == 8

    assert_nf4_merge_is_faithful(base, out, "cuda")


# GQA: grouped-query attention (4 heads sharing 2 key/value heads; FlashAttention needs head sizes divisible by 8)
@pytest.mark.parametrize("shape", ["SMALL", "GQA"])
def test_packed_varlen_attention_matches_padded_loss_on_cuda(tmp_path, shape):
    """Packed row through varlen flash attention (boundaries carried in the batch) == the same samples padded,
    through SDPA. (That withheld boundaries change the loss is shown on CPU, test_packing.py: on this random model
    in bf16 the change is within the kernels' rounding.)"""
    from loraops_trainer import synthetic_base
    from loraops_trainer.data import read_records, tokenize
    from loraops_trainer.inputs import load_tokenizer
    from loraops_trainer.model import load_base_model
    from loraops_trainer.packing import PackedCollator, pad_batch
    from loraops_trainer.settings import TrainConfig

    texts = synthetic_base.dolly_texts(DOLLY)
    shapes = {
        "SMALL": synthetic_base.SMALL,
        "GQA": synthetic_base.llama_shape(128, 256, 2, heads=4, kv_heads=2, vocab=512),
    }
    base = synthetic_base.build_base_model(tmp_path / "base", texts, shapes[shape])
    tokenizer = load_tokenizer(str(base))
    samples = tokenize(read_records(DOLLY)[:12], tokenizer, 512).samples
    losses = {}
    for attention in ("packed_varlen", "sdpa"):
        config = TrainConfig(
            **dict(
                base_model_dir=str(base),
                train_path=str(DOLLY),
                model_dir=str(tmp_path),
                quantization="none",
                dtype="float32" if attention == "sdpa" else "bfloat16",
                attention=attention,
            )
        )
        model = load_base_model(config)
        batch = (
            PackedCollator(tokenizer.pad_token_id, boundaries=True)([samples])
            if attention != "sdpa"
            else pad_batch(samples, tokenizer.pad_token_id)
        )
        with torch.no_grad():
            losses[attention] = model(
                **{k: v.cuda() if torch.is_tensor(v) else v for k, v in batch.items()}
            ).loss.item()
    assert abs(losses["packed_varlen"] - losses["sdpa"]) < 2e-2, losses


def test_diverged_run_on_cuda_fails_and_publishes_nothing(tmp_path):
    """On CUDA the fail-fast non-finite check reads its flag one step late (no stall): still nothing ships."""
    from loraops_trainer.synthetic_base import SMALL, build_base_model, dolly_texts

    base = build_base_model(tmp_path / "base", dolly_texts(DOLLY), SMALL)
    out = tmp_path / "out"
    result = run_train(
        fast_args(
            base, out, quantization="nf4", tokens_per_step=2048, max_seq_length=512, max_steps=8, learning_rate=1e30
        )
    )
    assert result.returncode == 2, result.stderr[-3000:]
    assert "train: error: non-finite loss or gradient at optimizer step" in result.stderr
    assert not out.exists() or not any(out.iterdir())
