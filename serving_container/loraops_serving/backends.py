"""The forwards behind the scheduler, two ways; the scheduler (joins and leaves at step boundaries, per-row
sampling and generators, cancellation, failures) is the same over both.

* :class:`EagerBackend` (the CPU, and any model the graph step does not implement): transformers' forward over the
  running batch with a ``DynamicCache``; new rows are prefilled left-padded and merged in, leaving rows are cut
  out of the cache. The reference implementation.
* :class:`GraphBackend` (CUDA): :class:`~loraops_serving.graph_decode.GraphDecoder`'s static KV cache, each
  running row in a cache row of its own (the lowest free one when it joins, freed the moment it leaves), and one
  decode step over rows ``0 .. n-1`` replayed as a CUDA graph. A request must fit the cache's ``max_len``
  positions (``LORAOPS_MAX_TOTAL_TOKENS``); the engine refuses a longer one (400) before it runs.

Both hand the scheduler a running batch with ``seqs``, ``logits`` (``[rows, vocab]``, float32, on the model's
device, row ``i`` the next-token scores of ``seqs[i]``; the scheduler copies to the host only the chosen tokens,
and the rows that sample), ``select(keep)`` (only those rows stay) and ``close()`` (every row leaves).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import torch
from transformers import DynamicCache

from loraops_serving.multi_lora import Routing
from loraops_serving.sequence import Sequence

log = logging.getLogger("loraops_serving")

BACKENDS = ("auto", "eager", "graph")


# ------------------------------------------------------------------------------------------------------ eager
@dataclass
class Batch:
    """The running rows between decode steps: their KV cache, attention mask ``[rows, time]`` (0 = left padding),
    adapter slots ``[rows]`` and the logits of their next token ``[rows, vocab]`` (float32, the model's device)."""

    seqs: list[Sequence]
    cache: DynamicCache
    mask: torch.Tensor
    slots: torch.Tensor
    logits: torch.Tensor

    def select(self, keep: list[int]) -> Batch:
        """Only rows ``keep`` (rows leave between steps); columns that are padding in every kept row go."""
        index = torch.tensor(keep, device=self.mask.device)
        mask = self.mask[index]
        start = int((mask.sum(0) > 0).nonzero()[0]) if mask.any() else 0
        layers = [(k[index, :, start:], v[index, :, start:]) for k, v in _kv(self.cache)]
        return Batch(
            [self.seqs[i] for i in keep], DynamicCache(layers), mask[:, start:], self.slots[index], self.logits[keep]
        )

    def close(self) -> None:
        """Every row leaves (nothing to give back: the cache goes with the batch)."""


def _kv(cache: DynamicCache) -> list[tuple[torch.Tensor, torch.Tensor]]:
    return [(layer.keys, layer.values) for layer in cache.layers]


class EagerBackend:
    name = "eager"
    max_len: int | None = None  # only the model's context bounds a request

    def __init__(self, model, routing: Routing, pad_token_id: int, device: str) -> None:
        self.model, self.routing, self.pad, self.device = model, routing, pad_token_id, device

    @torch.no_grad()  # not inference_mode: adapter slots loaded here are updated in place later
    def prefill(self, seqs: list[Sequence]) -> Batch:
        """One forward over the new rows' prompts (left-padded); their cache and next-token logits."""
        width = max(len(s.prompt_ids) for s in seqs)
        ids = [[self.pad] * (width - len(s.prompt_ids)) + s.prompt_ids for s in seqs]
        ids = torch.tensor(ids, device=self.device)
        mask = torch.tensor([[0] * (width - len(s.prompt_ids)) + [1] * len(s.prompt_ids) for s in seqs])
        mask = mask.to(self.device)
        slots = torch.tensor([s.slot for s in seqs], device=self.device)
        logits, cache = self._forward(ids, mask, slots, DynamicCache())
        return Batch(seqs, cache, mask, slots, logits)

    @torch.no_grad()
    def decode_step(self, batch: Batch, tokens: list[int]) -> Batch:
        """One forward over the running batch: each row's newest token against the KV cache."""
        mask = torch.cat([batch.mask, batch.mask.new_ones(len(tokens), 1)], dim=1)
        ids = torch.tensor(tokens, device=self.device).unsqueeze(1)
        logits, cache = self._forward(ids, mask, batch.slots, batch.cache)
        return Batch(batch.seqs, cache, mask, batch.slots, logits)

    def _forward(
        self, ids: torch.Tensor, mask: torch.Tensor, slots: torch.Tensor, cache: DynamicCache
    ) -> tuple[torch.Tensor, DynamicCache]:
        positions = (mask.cumsum(-1) - 1).clamp(min=0)[:, -ids.shape[1] :]
        self.routing.rows, self.routing.active = slots, bool(slots.any())
        try:
            out = self.model(
                input_ids=ids, attention_mask=mask, position_ids=positions, past_key_values=cache, use_cache=True
            )
        finally:
            self.routing.rows, self.routing.active = None, False
        return out.logits[:, -1].float(), out.past_key_values

    @staticmethod
    def merge(running: Batch | None, joining: Batch) -> Batch:
        """One batch of ``running`` and ``joining`` rows (the shorter cache left-padded in time)."""
        if running is None:
            return joining
        width = max(running.mask.shape[1], joining.mask.shape[1])

        def widen(t: torch.Tensor, dim: int) -> torch.Tensor:
            missing = width - t.shape[dim]
            if not missing:
                return t
            shape = list(t.shape)
            shape[dim] = missing
            return torch.cat([t.new_zeros(shape), t], dim=dim)

        layers = [
            (torch.cat([widen(k1, 2), widen(k2, 2)]), torch.cat([widen(v1, 2), widen(v2, 2)]))
            for (k1, v1), (k2, v2) in zip(_kv(running.cache), _kv(joining.cache))
        ]
        return Batch(
            running.seqs + joining.seqs,
            DynamicCache(layers),
            torch.cat([widen(running.mask, 1), widen(joining.mask, 1)]),
            torch.cat([running.slots, joining.slots]),
            torch.cat([running.logits, joining.logits]),
        )


# ------------------------------------------------------------------------------------------------------ graph
class RowPool:
    """The static cache's rows: a joining request takes the lowest free ones, a leaving one gives its back."""

    def __init__(self, size: int) -> None:
        self.size = size
        self.free = set(range(size))

    def take(self, count: int) -> list[int]:
        if count > len(self.free):
            raise RuntimeError(f"{count} rows asked for, {len(self.free)} of {self.size} free")
        rows = sorted(self.free)[:count]
        self.free -= set(rows)
        return rows

    def give(self, rows: list[int]) -> None:
        self.free |= set(rows)


@dataclass
class GraphBatch:
    """The running rows in the static cache: ``rows[i]`` is ``seqs[i]``'s cache row, ``positions[i]`` the
    position its next token is fed at (the tokens already in its row)."""

    seqs: list[Sequence]
    rows: list[int]
    positions: list[int]
    logits: torch.Tensor
    pool: RowPool

    def select(self, keep: list[int]) -> GraphBatch:
        """Only rows ``keep``; the others' cache rows are free for the next request at once."""
        kept = set(keep)
        self.pool.give([row for i, row in enumerate(self.rows) if i not in kept])
        return GraphBatch(
            [self.seqs[i] for i in keep],
            [self.rows[i] for i in keep],
            [self.positions[i] for i in keep],
            self.logits[keep],
            self.pool,
        )

    def close(self) -> None:
        """Every row leaves; their cache rows are free."""
        self.pool.give(self.rows)


class GraphBackend:
    """:class:`GraphDecoder` over the engine's model and routing; every call runs under ``lock`` (the engine's:
    adapters are loaded into slots and evicted under it)."""

    name = "graph"

    def __init__(self, model, routing: Routing, lock, max_batch: int, max_len: int) -> None:
        from loraops_serving.graph_decode import GraphDecoder

        self.decoder = GraphDecoder(model, routing, max_batch=max_batch, max_len=max_len)
        self.lock, self.max_len = lock, max_len
        self.pool = RowPool(max_batch)

    def warm_up(self, every_bucket: bool = False) -> int:
        """Capture the smallest step now (on CUDA this compiles the fused pieces at start-up, not on a request), or,
        ``every_bucket``, every (batch, window, adapters) step, so that no step under load waits for a capture."""
        with self.lock:
            if every_bucket:
                return self.decoder.warm_up()
            return self.decoder.warm_up(batches=[1], windows=[self.decoder.window_buckets[0]])

    @torch.no_grad()
    def prefill(self, seqs: list[Sequence]) -> GraphBatch:
        rows = self.pool.take(len(seqs))
        try:
            with self.lock:
                logits = self.decoder.prefill(rows, [s.prompt_ids for s in seqs], [s.slot for s in seqs])
                logits = logits.float()
        except BaseException:
            self.pool.give(rows)
            raise
        return GraphBatch(seqs, rows, [len(s.prompt_ids) for s in seqs], logits, self.pool)

    @torch.no_grad()
    def decode_step(self, batch: GraphBatch, tokens: list[int]) -> GraphBatch:
        """One step over rows ``0 .. max(rows)``; a free row in between is fed at position -1 (idle)."""
        n = max(batch.rows) + 1
        fed, positions, slots = [0] * n, [-1] * n, [0] * n
        for seq, row, position, token in zip(batch.seqs, batch.rows, batch.positions, tokens):
            fed[row], positions[row], slots[row] = token, position, seq.slot
        with self.lock:
            out = self.decoder.decode(fed, positions, slots)  # a view, valid until the next call: copied now
            logits = out[torch.tensor(batch.rows, device=out.device)].float()  # (indexing copies)
        return GraphBatch(batch.seqs, batch.rows, [p + 1 for p in batch.positions], logits, self.pool)

    @staticmethod
    def merge(running: GraphBatch | None, joining: GraphBatch) -> GraphBatch:
        if running is None:
            return joining
        return GraphBatch(
            running.seqs + joining.seqs,
            running.rows + joining.rows,
            running.positions + joining.positions,
            torch.cat([running.logits, joining.logits]),
            running.pool,
        )


def make_backend(choice: str, model, routing: Routing, lock, pad_token_id: int, max_batch: int, max_len: int):
    """``choice``: ``graph``, ``eager`` or ``auto`` (the graph step on CUDA when the model is one it implements and
    its cache fits, else eager, with the reason logged). ``graph`` on a model it does not implement raises
    ``ValueError``; on the CPU it runs the same step eagerly (what the CPU tests hold against the eager backend)."""
    if choice not in BACKENDS:
        raise ValueError(f"decode backend {choice!r} is none of {BACKENDS}")
    device = next(model.parameters()).device
    eager = EagerBackend(model, routing, pad_token_id, device.type)
    if choice == "eager" or (choice == "auto" and device.type != "cuda"):
        return eager
    return graph_or_eager(lambda: GraphBackend(model, routing, lock, max_batch, max_len), eager, choice == "graph")


def graph_or_eager(build, eager: EagerBackend, strict: bool):
    """The graph backend ``build()`` returns, warmed up; when the model is one it does not implement
    (``ValueError``) or its cache does not fit (out of memory), ``eager`` with the reason logged, or, ``strict``,
    the error."""
    try:
        backend = build()
        backend.warm_up()
    except (ValueError, torch.OutOfMemoryError) as failure:
        if strict:
            raise
        log.warning("decode backend: eager, since the graph step cannot serve this model: %s", failure)
        if torch.cuda.is_available():
            torch.cuda.empty_cache()  # what the failed cache took
        return eager
    return backend
