"""Prefill for :class:`~loraops_serving.graph_decode.GraphDecoder`: write each admitted prompt's keys and values
into its static-cache row and return its last token's logits; eager, all prompts at once, or one prompt at a time
from static buffers, right-padded to a length bucket (captured as a CUDA graph per bucket on CUDA)."""

from __future__ import annotations

from collections.abc import Sequence

import torch


class PrefillMixin:
    """The prefill half of :class:`~loraops_serving.graph_decode.GraphDecoder` (it provides the cache, the static
    buffers, ``_forward``, ``_sdpa``, ``_route``, ``_graph`` and ``_sync_groups``)."""

    @torch.no_grad()
    def prefill(self, rows: Sequence[int], prompts: Sequence[Sequence[int]], slots: Sequence[int]) -> torch.Tensor:
        """Write each prompt's keys and values into its cache row; return the logits of each prompt's last token
        ``[len(rows), vocab]``. The prompts' next position is their length (the first :meth:`decode` position)."""
        if not len(rows) == len(prompts) == len(slots) or not rows:
            raise ValueError("prefill needs one prompt and one slot per row, and at least one row")
        if len(set(rows)) != len(rows) or not all(0 <= r < self.max_batch for r in rows):
            raise ValueError(f"prefill rows must be distinct and in 0..{self.max_batch - 1}: {list(rows)}")
        lengths = [len(p) for p in prompts]
        if min(lengths) < 1 or max(lengths) >= self.max_len:
            raise ValueError(
                f"prompt lengths {lengths} must be in 1..{self.max_len - 1} (the cache holds {self.max_len})"
            )
        self._sync_groups()
        if self.bucketed_prefill:
            return torch.cat([self._prefill_one(*args) for args in zip(rows, prompts, slots)])
        width = max(lengths)
        ids = torch.zeros(len(rows), width, dtype=torch.long)
        for j, prompt in enumerate(prompts):  # right-padded: padding only ever follows a row's real tokens
            ids[j, : len(prompt)] = torch.as_tensor(prompt, dtype=torch.long)
        ids = ids.to(self.device)
        positions = torch.arange(width, device=self.device).expand(len(rows), -1)
        cache_rows = torch.as_tensor(list(rows), device=self.device)

        def write(i, k, v):
            self.keys[i, cache_rows, :, :width] = k
            self.values[i, cache_rows, :, :width] = v

        def attend(i, q, k, v):
            return self._sdpa(q, k, v, is_causal=True)

        self._route(torch.as_tensor(list(slots), device=self.device), any(slots))
        try:
            hidden = self._forward(ids, positions, write, attend)
        finally:
            self._route(None, False)
        last = hidden[torch.arange(len(rows), device=self.device), torch.as_tensor(lengths, device=self.device) - 1]
        return self.model.lm_head(last)

    def _prefill_one(self, row: int, prompt: Sequence[int], slot: int) -> torch.Tensor:
        """One prompt through the static prefill buffers, padded to its bucket; its last token's logits ``[1, V]``
        (a copy: the graph's output is overwritten by the next replay)."""
        length = next(b for b in self.prefill_buckets if b >= len(prompt))
        host = torch.zeros(self.max_len + 3, dtype=torch.long)
        host[: len(prompt)] = torch.as_tensor(prompt, dtype=torch.long)
        host[-3:] = torch.tensor([row, slot, len(prompt) - 1])
        self.prefill_in.copy_(host, non_blocking=False)
        lora = bool(slot) and self.routing.version > 0
        if not self.graphs_on:
            return self._prefill_step(length, lora).clone()
        return self._graph(("prefill", length, lora), lambda: self._prefill_step(length, lora)).clone()

    def _prefill_step(self, length: int, lora: bool) -> torch.Tensor:
        """The captured prefill of one prompt padded to ``length`` (the padding's keys and values land past the
        prompt in its own row, where decode overwrites them before any step attends to them)."""
        meta = self.prefill_in[-3:]
        ids = self.prefill_in[None, :length]
        positions = torch.arange(length, device=self.device)[None, :]
        row = meta[0:1]

        def write(i, k, v):
            self.keys[i, row, :, :length] = k
            self.values[i, row, :, :length] = v

        def attend(i, q, k, v):
            return self._sdpa(q, k, v, is_causal=True)

        self._route(meta[1:2] if lora else None, lora)
        try:
            hidden = self._forward(ids, positions, write, attend)
        finally:
            self._route(None, False)
        return self.model.lm_head(hidden[0].index_select(0, meta[2:3]))
