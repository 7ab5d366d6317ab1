"""Padding-free packing: bins within budget, boundaries respected, loss equal to the padded batch."""

from __future__ import annotations

import pytest
import torch

from loraops_trainer.data import IGNORE_INDEX, Sample, read_records, tokenize
from loraops_trainer.packing import PackedCollator, PackedDataset, pack, pad_batch
from tests.helpers import DOLLY


def test_bins_respect_budget_and_cover_every_sample_once():
    lengths = [5, 9, 3, 7, 2, 8, 1, 6]
    bins = pack(lengths, budget=12, seed=0)
    assert sorted(i for b in bins for i in b) == list(range(len(lengths)))
    assert all(sum(lengths[i] for i in b) <= 12 for b in bins)
    assert len(bins) == 4  # 41 tokens in 12-token bins: first-fit decreasing reaches the minimum


def test_sample_longer_than_budget_is_refused():
    with pytest.raises(ValueError, match="1 sample"):
        pack([3, 20], budget=10, seed=0)


def test_packed_row_restarts_positions_and_ignores_first_label():
    a = Sample(input_ids=[1, 5, 6], labels=[IGNORE_INDEX, 5, 6])
    b = Sample(input_ids=[1, 7], labels=[IGNORE_INDEX, 7])
    batch = PackedCollator(pad_token_id=0, pad_to=8)([[a, b]])
    assert batch["input_ids"].tolist() == [[1, 5, 6, 1, 7, 0, 0, 0]]
    assert batch["position_ids"].tolist() == [[0, 1, 2, 0, 1, 0, 1, 2]]
    assert batch["labels"].tolist() == [[IGNORE_INDEX, 5, 6, IGNORE_INDEX, 7] + [IGNORE_INDEX] * 3]
    assert "attention_mask" not in batch


@pytest.mark.parametrize("attention", ["sdpa", "eager"])
def test_packed_loss_equals_padded_loss(tiny_base, tokenizer, attention):
    """Same samples, packed in one row vs padded to the longest: same loss, so no cross-sample attention."""
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(str(tiny_base), attn_implementation=attention).eval()
    # As in training: no KV cache (transformers only derives per-sample masks from position ids without one).
    model.config.use_cache = False
    samples = tokenize(read_records(DOLLY)[:10], tokenizer, max_seq_length=256).samples
    with torch.no_grad():
        packed = model(**PackedCollator(tokenizer.pad_token_id)([samples])).loss
        padded = model(**pad_batch(samples, tokenizer.pad_token_id)).loss
        # Control: the same row *without* restarting positions lets samples see each other.
        leaky = PackedCollator(tokenizer.pad_token_id)([samples])
        leaky["position_ids"] = torch.arange(leaky["input_ids"].shape[1])[None]
        crossed = model(**leaky).loss
    assert torch.allclose(packed, padded, atol=1e-5), (packed, padded)
    assert not torch.allclose(crossed, padded, atol=1e-3)


def test_packed_dataset_tokens():
    samples = [Sample([1] * n, [IGNORE_INDEX] * n) for n in (4, 5, 6)]
    dataset = PackedDataset(samples, budget=10, seed=1)
    assert dataset.tokens == 15
    assert sum(len(s) for i in range(len(dataset)) for s in dataset[i]) == 15


def test_boundaries_travel_with_the_batch_padding_segment_included():
    a = Sample(input_ids=[1, 5, 6], labels=[IGNORE_INDEX, 5, 6])
    b = Sample(input_ids=[1, 7], labels=[IGNORE_INDEX, 7])
    batch = PackedCollator(pad_token_id=0, pad_to=8, boundaries=True)([[a, b]])
    assert batch["cu_seq_lens_q"].tolist() == [0, 3, 5, 8] and batch["cu_seq_lens_q"].dtype == torch.int32
    assert batch["cu_seq_lens_k"].tolist() == [0, 3, 5, 8]
    assert batch["max_length_q"] == batch["max_length_k"] == 3
    assert "cu_seq_lens_q" not in PackedCollator(pad_token_id=0)([[a, b]])  # only for the varlen path


def _cpu_varlen(
    query, key, value, cu_q, cu_k, max_q, max_k, scale=None, is_causal=False, window_size=None, enable_gqa=False
):
    """Stand-in for torch's CUDA-only varlen FlashAttention (no CPU kernel exists): causal SDPA per sample."""
    outputs = []
    for start, end in zip(cu_q[:-1].tolist(), cu_q[1:].tolist()):
        q, k, v = (t[start:end].transpose(0, 1) for t in (query, key, value))
        outputs.append(
            torch.nn.functional.scaled_dot_product_attention(
                q, k, v, is_causal=True, scale=scale, enable_gqa=enable_gqa
            ).transpose(0, 1)
        )
    return torch.cat(outputs)


@pytest.mark.parametrize("shape", ["TINY", "ODD"])  # ODD has grouped-query attention (4 heads, 2 key/value heads)
def test_varlen_path_reads_boundaries_from_the_batch_through_the_model(tmp_path, monkeypatch, shape):
    """The boundaries reach the attention function as keyword arguments through transformers' Llama: the packed
    row's loss equals the padded batch's, and a row whose boundaries are withheld differs (nothing is remembered
    from an earlier batch)."""
    from transformers import AutoModelForCausalLM

    from loraops_trainer import attention, synthetic_base
    from loraops_trainer.inputs import load_tokenizer

    base = synthetic_base.build_base_model(tmp_path, synthetic_base.dolly_texts(DOLLY), getattr(synthetic_base, shape))
    tokenizer = load_tokenizer(str(base))
    attention._varlen_options.cache_clear()
    monkeypatch.setattr(attention, "_varlen_options", lambda: (_cpu_varlen, {"is_causal": True}, True))
    attention.register()
    model = AutoModelForCausalLM.from_pretrained(str(base), attn_implementation=attention.NAME).eval()
    model.config.use_cache = False
    samples = tokenize(read_records(DOLLY)[:10], tokenizer, max_seq_length=256).samples
    with torch.no_grad():
        packed = model(**PackedCollator(tokenizer.pad_token_id, boundaries=True)([samples])).loss
        padded = model(**pad_batch(samples, tokenizer.pad_token_id)).loss
        withheld = model(**PackedCollator(tokenizer.pad_token_id)([samples])).loss  # plain causal SDPA over the row
    assert torch.allclose(packed, padded, atol=1e-5), (packed, padded)
    assert not torch.allclose(withheld, padded, atol=1e-3)
