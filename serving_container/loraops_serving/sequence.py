"""One row in flight: its tokens, its own random generator, its stop/length rules and the text it has shown.

Sampling is per row (temperature, top-k, top-p, repetition penalty, and a ``torch.Generator`` seeded from the
request's seed), so a seeded row draws the same tokens whatever rows share its batch, and whether it streams.
"""

from __future__ import annotations

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


def pick_token(logits: torch.Tensor, sampling: Sampling, history: list[int], generator: torch.Generator) -> int:
    """The next token of one row from its float32 logits ``[vocab]`` (CPU)."""
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
    text: str = ""
    generator: torch.Generator = field(default_factory=torch.Generator)

    def __post_init__(self) -> None:
        seed = self.row.sampling.seed
        if seed is None:
            self.generator.seed()
        else:
            self.generator.manual_seed(seed)

    def advance(self, token: int, eos: int | None, decode) -> str:
        """Take one token; return the new text that is safe to show (never part of a stop string, never half a
        character). Sets ``finish_reason`` when the row is done."""
        row = self.row
        if eos is not None and token == eos:
            self.finish_reason = "eos"
        else:
            self.generated.append(token)
            self.text = decode(self.generated)
        cuts = [self.text.index(s) for s in row.stop if s in self.text]
        if cuts:
            self.text, self.finish_reason = self.text[: min(cuts)], "stop"
        elif self.finish_reason is None and len(self.generated) >= row.max_new_tokens:
            self.finish_reason = "length"
        safe = len(self.text)
        if self.finish_reason is None:
            # an incomplete UTF-8 character decodes to up to 3 replacement characters until its last byte arrives
            safe -= min(3, len(self.text) - len(self.text.rstrip("\ufffd")))
            for stop in row.stop:  # hold back a tail that may become a stop string
                for n in range(min(len(stop) - 1, safe), 0, -1):
                    if self.text[:safe].endswith(stop[:n]):
                        safe -= n
                        break
        piece = self.text[self.shown : max(safe, self.shown)]
        self.shown = max(safe, self.shown)
        return piece

    def result(self) -> Generation:
        return Generation(self.text, len(self.generated), self.finish_reason or "length")
