"""Incremental detokenization (``Sequence.advance``) against decoding the whole generation, token by token, on
hostile cases: multi-byte characters split across tokens, tokens that lose their leading space when decoded alone
(SentencePiece-style), and stop strings that span tokens. The reference is what the scheduler did before: decode
every generated token again at every step and look for the stop strings in the whole text."""

from __future__ import annotations

import pytest
from tokenizers import Tokenizer, decoders, models
from transformers import PreTrainedTokenizerFast

from loraops_serving.sequence import Row, Sequence

# a Llama-2-style vocabulary: "▁" marks a leading space, rare characters fall back to their UTF-8 bytes
PIECES = ["<unk>", "</s>", "▁Hello", "▁world", "ing", "▁", "!", "▁stop", "s", "<0xE2>", "<0x82>", "<0xAC>"]
PIECES += ["<0xF0>", "<0x9F>", "<0x98>", "<0x80>", "▁caf", "<0xC3>", "<0xA9>", "▁日本"]


@pytest.fixture(scope="module")
def sentencepiece_like() -> PreTrainedTokenizerFast:
    tok = Tokenizer(models.WordLevel({p: i for i, p in enumerate(PIECES)}, unk_token="<unk>"))
    tok.decoder = decoders.Sequence(
        [decoders.Replace("▁", " "), decoders.ByteFallback(), decoders.Fuse(), decoders.Strip(" ", 1, 0)]
    )
    return PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="<unk>", eos_token="</s>")


def ids(*pieces: str) -> list[int]:
    return [PIECES.index(p) for p in pieces]


# "Hello world €! 😀 café 日本 stops": the euro sign, the emoji and "é" each split into their bytes
HOSTILE = ids("▁Hello", "▁world", "▁", "<0xE2>", "<0x82>", "<0xAC>", "!", "▁", "<0xF0>", "<0x9F>", "<0x98>", "<0x80>")
HOSTILE += ids("▁caf", "<0xC3>", "<0xA9>", "▁日本", "▁stop", "s", "ing")


def reference(tokens: list[int], decode, stop: tuple[str, ...], max_new: int) -> tuple[str, int, str]:
    """The whole generation decoded at every step: (text, tokens taken, finish reason)."""
    for n in range(1, len(tokens) + 1):
        text = decode(tokens[:n])
        cuts = [text.index(s) for s in stop if s in text]
        if cuts:
            return text[: min(cuts)], n, "stop"
        if n >= max_new:
            return text, n, "length"
    raise AssertionError("the tokens ran out first")


def incremental(tokens: list[int], decode, stop: tuple[str, ...], max_new: int) -> tuple[str, int, str, list[str]]:
    seq = Sequence(Row("", None, max_new, stop), [0], ticket=None, index=0)
    pieces = []
    for token in tokens:
        pieces.append(seq.advance(token, eos=None, decode=decode))
        if seq.finish_reason is not None:
            break
    result = seq.result()
    assert "".join(pieces) == result.text  # what streamed is the text, piece by piece
    return result.text, result.tokens, result.finish_reason, pieces


CASES = [
    ((), 5),  # ends inside the euro sign's bytes
    ((), 12),  # ends right after the emoji
    ((), len(HOSTILE)),
    (("€!",), len(HOSTILE)),  # spans three byte tokens and the "!"
    (("d €",), len(HOSTILE)),  # spans "▁world", "▁" and the bytes
    (("é 日",), len(HOSTILE)),  # spans the bytes of "é" and a SentencePiece space
    (("stopsing", "日本 st"), len(HOSTILE)),  # the earlier of two stops wins
    (("Hello w",), len(HOSTILE)),  # a stop right at the start
    (("never there",), len(HOSTILE)),
]


@pytest.mark.parametrize("stop,max_new", CASES)
def test_sentencepiece_like_equals_full_decode(sentencepiece_like, stop, max_new) -> None:
    decode = lambda t: sentencepiece_like.decode(t, skip_special_tokens=True)  # noqa: E731
    text, taken, reason, pieces = incremental(HOSTILE, decode, stop, max_new)
    assert (text, taken, reason) == reference(HOSTILE, decode, stop, max_new)
    # half a character is never streamed before the end (a row cut off inside one ends with what decoding gives)
    assert all("\ufffd" not in piece for piece in pieces[:-1])


def test_sentencepiece_like_full_text(sentencepiece_like) -> None:
    decode = lambda t: sentencepiece_like.decode(t, skip_special_tokens=True)  # noqa: E731
    assert incremental(HOSTILE, decode, (), len(HOSTILE))[0] == "Hello world €! 😀 café 日本 stopsing"


@pytest.mark.parametrize("stop", [(), ("é —",), ("本語 ",), ("😀\n",), ("naï",)])
def test_byte_level_equals_full_decode(tokenizer, stop) -> None:
    """The tests' byte-level BPE: rare characters are split into byte tokens."""
    tokens = tokenizer.encode("naïve café — 日本語 😀\nHello there, world €5 ✓", add_special_tokens=False)
    decode = lambda t: tokenizer.decode(t, skip_special_tokens=True)  # noqa: E731
    assert any("\ufffd" in decode([t]) for t in tokens)  # the case is hostile: some token is half a character
    text, taken, reason, _ = incremental(tokens, decode, stop, len(tokens))
    assert (text, taken, reason) == reference(tokens, decode, stop, len(tokens))


def test_a_step_decodes_only_the_new_tokens(sentencepiece_like) -> None:
    """The work per step stays bounded: no decode call sees more than the look-back window and the new tokens."""
    seen: list[int] = []

    def decode(t: list[int]) -> str:
        seen.append(len(t))
        return sentencepiece_like.decode(t, skip_special_tokens=True)

    words = ids("▁Hello", "▁world") * 200
    text, taken, _, _ = incremental(words, decode, ("never",), len(words))
    assert taken == len(words) and text == " ".join(["Hello", "world"] * 200)
    assert max(seen) <= 2
