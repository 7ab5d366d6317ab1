"""One row in flight: its tokens, its own random generator, its stop/length rules and the text it has shown.

Sampling is per row (temperature, top-k, top-p, repetition penalty, and a ``torch.Generator`` seeded from the
request's seed), so a seeded row draws the same tokens whatever rows share its batch, and whether it streams.
Greedy rows are picked together, by one argmax over the batch's logits on their device.

The text grows incrementally (as text-generation-inference and vLLM do): each step decodes only the tokens since
the last committed character plus a small look-back window, never the whole generation, and a stop string is
looked for only in the new tail, so a step's host work does not grow with the sequence.
"""

from __future__ import annotations

from collections.abc import Collection
from dataclasses import dataclass, field

import torch

from loraops_serving.schema import Sampling


@dataclass(frozen=True)
class Row:
    prompt: str
    adapter: str | None
    max_new_tokens: int
    stop: tuple[str, ...] = ()
    sampling: Sampling = Sampling()


@dataclass(frozen=True)
class Generation:
    text: str
    tokens: int
    finish_reason: str  # "length" | "stop" | "eos"


def pick_token(logits: torch.Tensor, sampling: Sampling, history: Collection[int], generator: torch.Generator) -> int:
    """The next token of one row from its float32 logits ``[vocab]`` (CPU); ``history``: the token ids the row has
    seen (prompt and generated)."""
    scores = logits.clone()
    if sampling.repetition_penalty != 1.0 and history:
        seen = torch.tensor(sorted(set(history)), dtype=torch.long)
        picked = scores[seen]
        penalty = sampling.repetition_penalty
        scores[seen] = torch.where(picked < 0, picked * penalty, picked / penalty)
    if not sampling.do_sample:
        return int(scores.argmax())
    scores = scores / sampling.temperature
    if 0 < sampling.top_k < scores.numel():
        kth = torch.topk(scores, sampling.top_k).values[-1]
        scores = scores.masked_fill(scores < kth, float("-inf"))
    if sampling.top_p < 1.0:
        ordered, order = torch.sort(scores, descending=True)
        cumulative = ordered.softmax(-1).cumsum(-1)
        drop = cumulative - ordered.softmax(-1) >= sampling.top_p  # keep the smallest head reaching top_p
        scores[order[drop]] = float("-inf")
    return int(torch.multinomial(scores.softmax(-1), 1, generator=generator))


def _plain(sampling: Sampling) -> bool:
    return not sampling.do_sample and sampling.repetition_penalty == 1.0


def pick_tokens(logits: torch.Tensor, seqs: list[Sequence]) -> list[int]:
    """Each row's next token from the batch's float32 logits ``[len(seqs), vocab]`` (any device): the greedy rows
    without a repetition penalty by one argmax over them on the logits' device, the others by :func:`pick_token`
    on the CPU with their own generator (one device-to-host copy for each kind)."""
    tokens = [0] * len(seqs)
    plain = [i for i, seq in enumerate(seqs) if _plain(seq.row.sampling)]
    if plain:
        chosen = logits if len(plain) == len(seqs) else logits[plain]
        for i, token in zip(plain, chosen.argmax(-1).tolist()):
            tokens[i] = token
    rest = [i for i, seq in enumerate(seqs) if not _plain(seq.row.sampling)]
    if rest:
        scores = logits[rest].cpu()
        for j, i in enumerate(rest):
            seq = seqs[i]
            tokens[i] = pick_token(scores[j], seq.row.sampling, seq.seen, seq.generator)
    return tokens


@dataclass
class Sequence:
    """A row's state between decode steps; ``ticket``/``index`` say whose row it is."""

    row: Row
    prompt_ids: list[int]
    ticket: object
    index: int
    slot: int = 0
    generated: list[int] = field(default_factory=list)
    shown: int = 0  # characters of the text already streamed
    finish_reason: str | None = None
    text: str = ""  # the text of ``generated`` (what decoding all of it gives)
    generator: torch.Generator = field(default_factory=torch.Generator)
    seen: set[int] = field(default_factory=set)  # the prompt's and generated token ids (repetition penalty)
    fixed: int = 0  # characters of ``text`` that later tokens cannot change
    prefix: int = 0  # ``generated[prefix:read]``: the look-back window, decoded again each step for context
    released: bool = False  # its adapter slot is given back (once: a failing step must not give it back twice)
    read: int = 0  # ``generated[read:]``: the tokens whose text is not yet fixed

    def __post_init__(self) -> None:
        self.seen = set(self.prompt_ids)
        seed = self.row.sampling.seed
        if seed is None:
            self.generator.seed()
        else:
            self.generator.manual_seed(seed)

    def advance(self, token: int, eos: int | None, decode) -> str:
        """Take one token; return the new text that is safe to show (never part of a stop string, never half a
        character). Sets ``finish_reason`` when the row is done."""
        row = self.row
        fixed = self.fixed  # no stop string ends before here: it would have been found in an earlier step
        if eos is not None and token == eos:
            self.finish_reason = "eos"
        else:
            self.generated.append(token)
            self.seen.add(token)
            self._detokenize(decode)
        reach = max(fixed - max((len(s) for s in row.stop), default=1) + 1, 0)
        cuts = [at for s in row.stop if (at := self.text.find(s, reach)) >= 0]
        if cuts:
            self.text, self.finish_reason = self.text[: min(cuts)], "stop"
        elif self.finish_reason is None and len(self.generated) >= row.max_new_tokens:
            self.finish_reason = "length"
        safe = len(self.text)
        if self.finish_reason is None:
            # an incomplete UTF-8 character decodes to up to 3 replacement characters until its last byte arrives
            while safe > 0 and len(self.text) - safe < 3 and self.text[safe - 1] == "\ufffd":
                safe -= 1
            for stop in row.stop:  # hold back a tail that may become a stop string
                for n in range(min(len(stop) - 1, safe), 0, -1):
                    if self.text.endswith(stop[:n], 0, safe):
                        safe -= n
                        break
        piece = self.text[self.shown : max(safe, self.shown)]
        self.shown = max(safe, self.shown)
        return piece

    def _detokenize(self, decode) -> None:
        """``text`` after a new token: the fixed text plus what the tokens since ``prefix`` add to the look-back
        window's text (decoded alone, a token can lose a leading space or be half a character). When that tail
        ends in a whole character, it is fixed and the window moves on."""
        window = decode(self.generated[self.prefix : self.read]) if self.read > self.prefix else ""
        tail = decode(self.generated[self.prefix :])[len(window) :]
        self.text = self.text[: self.fixed] + tail
        if tail and not tail.endswith("\ufffd"):
            self.fixed = len(self.text)
            self.prefix, self.read = self.read, len(self.generated)

    def result(self) -> Generation:
        return Generation(self.text, len(self.generated), self.finish_reason or "length")
