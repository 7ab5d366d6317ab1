"""A stand-in base model for tests, demos and benchmarks where real weights cannot be downloaded.

A byte-level BPE tokenizer trained on the given text and a randomly initialised Llama of any shape,
saved as an ordinary Hugging Face folder that the trainer loads exactly like a real base model.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

import torch

#: The Llama-2-7B shape (random weights): what the GPU benchmark trains.
LLAMA2_7B = dict(
    hidden_size=4096,
    intermediate_size=11008,
    num_hidden_layers=32,
    num_attention_heads=32,
    num_key_value_heads=32,
    max_position_embeddings=4096,
    vocab_size=32000,
)
#: The same width with 4 layers: quick GPU probes of the 7B kernels.
LLAMA2_7B_4_LAYERS = {**LLAMA2_7B, "num_hidden_layers": 4}


def llama_shape(hidden: int, intermediate: int, layers: int, heads: int, kv_heads: int, vocab: int) -> dict:
    """A LlamaConfig shape (2,048 positions)."""
    return dict(
        hidden_size=hidden,
        intermediate_size=intermediate,
        num_hidden_layers=layers,
        num_attention_heads=heads,
        num_key_value_heads=kv_heads,
        max_position_embeddings=2048,
        vocab_size=vocab,
    )


#: A model small enough for CPU tests (well under a second per step).
TINY = llama_shape(64, 128, layers=2, heads=4, kv_heads=4, vocab=512)
#: Wide enough for GPU kernels to matter, small enough for a GPU test.
SMALL = llama_shape(512, 1024, layers=2, heads=8, kv_heads=8, vocab=2048)
#: A shape bitsandbytes' CPU repack cannot take (out-features not divisible by 32), with grouped-query
#: attention and an odd vocabulary.
ODD = llama_shape(72, 136, layers=2, heads=4, kv_heads=2, vocab=515)


def train_tokenizer(texts: Iterable[str], vocab_size: int):
    """A Llama-style tokenizer (BOS ``<s>``, EOS ``</s>``, UNK ``<unk>``) trained on ``texts``."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE(unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=["<unk>", "<s>", "</s>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
    )
    tok.train_from_iterator(texts, trainer)
    tok.post_processor = processors.TemplateProcessing(single="<s> $A", special_tokens=[("<s>", 1)])
    return PreTrainedTokenizerFast(
        tokenizer_object=tok, bos_token="<s>", eos_token="</s>", unk_token="<unk>", pad_token="<unk>"
    )


def sentencepiece_tokenizer(model_file: Path):
    """A Llama-2-class tokenizer from a SentencePiece ``tokenizer.model`` (e.g. the 32k BPE with byte fallback
    that the ``mistral-common`` package ships as ``mistral_common/data/tokenizer.model.v1``). The conversion
    needs ``sentencepiece`` and ``protobuf``; the saved ``tokenizer.json`` loads without them."""
    import shutil
    import tempfile

    from transformers import AutoTokenizer

    with tempfile.TemporaryDirectory() as folder:
        shutil.copy(model_file, Path(folder) / "tokenizer.model")
        (Path(folder) / "tokenizer_config.json").write_text(
            '{"tokenizer_class": "LlamaTokenizer", "bos_token": "<s>", "eos_token": "</s>", "unk_token": "<unk>", '
            '"add_bos_token": true, "add_eos_token": false, "legacy": false}'
        )
        return AutoTokenizer.from_pretrained(folder)


def build_base_model(
    folder: Path,
    texts: Iterable[str],
    shape: dict,
    seed: int = 0,
    dtype: torch.dtype = torch.float32,
    tokenizer=None,
) -> Path:
    """Write a tokenizer (``tokenizer``, else one trained on ``texts``) and a random Llama of ``shape``."""
    from transformers import LlamaConfig, LlamaForCausalLM

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    tokenizer = tokenizer or train_tokenizer(texts, shape["vocab_size"])
    torch.manual_seed(seed)
    config = LlamaConfig(
        **shape, bos_token_id=1, eos_token_id=2, pad_token_id=0, tie_word_embeddings=False, rms_norm_eps=1e-5
    )
    with torch.device("cuda" if dtype == torch.bfloat16 and torch.cuda.is_available() else "cpu"):
        model = LlamaForCausalLM(config).to(dtype)
    model.save_pretrained(str(folder), safe_serialization=True)
    tokenizer.save_pretrained(str(folder))
    return folder


#: The fields of a dolly record, in the order its text runs.
DOLLY_FIELDS = ("instruction", "context", "response")


def dolly_texts(path: Path, leave_out_last: int = 0, fields: tuple[str, ...] = DOLLY_FIELDS) -> list[str]:
    """The ``fields`` of each record of a dolly JSONL file joined by spaces (a tokenizer or pre-training corpus),
    without the file's last ``leave_out_last`` records (held out)."""
    import json

    rows = [json.loads(line) for line in Path(path).read_text().splitlines() if line.strip()]
    rows = rows[: len(rows) - leave_out_last]
    return [" ".join(str(r.get(k, "")) for k in fields) for r in rows]
