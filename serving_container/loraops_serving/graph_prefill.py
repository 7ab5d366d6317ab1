"""Prefill for :class:`~loraops_serving.graph_decode.GraphDecoder`: write each admitted prompt's keys and values
into its static-cache row and return its last token's logits; eager, all prompts at once (left-aligned rows of one
width), or packed: the prompts end to end in one sequence of at most ``max_len`` tokens from static buffers,
right-padded to a length bucket (captured as a CUDA graph per bucket on CUDA), so one forward prefills every prompt
the scheduler admits in a step (several forwards where they exceed ``max_len`` together)."""

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
            packs = self._packs(lengths)
            pick = [[seq[j] for j in pack] for pack in packs for seq in (rows, prompts, slots)]
            return torch.cat([self._prefill_packed(*pick[3 * n : 3 * n + 3]) for n in range(len(packs))])
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

    def _packs(self, lengths: list[int]) -> list[list[int]]:
        """The prompts' indices in order, cut into packs of at most ``max_len`` tokens (the static buffers' size)."""
        packs: list[list[int]] = [[]]
        total = 0
        for j, length in enumerate(lengths):
            if packs[-1] and total + length > self.max_len:
                packs.append([])
                total = 0
            packs[-1].append(j)
            total += length
        return packs

    def _prefill_packed(self, rows: Sequence[int], prompts: Sequence[Sequence[int]], slots: Sequence[int]):
        """Several prompts packed end to end into one sequence, right-padded to its length bucket, one forward
        (one graph replay on CUDA) from the static buffers; each prompt's last token's logits ``[len(rows), V]``
        (a copy: the graph's output is overwritten by the next replay). Every token carries its own position,
        cache row, adapter slot and segment (its prompt): a token attends only to earlier tokens of its own prompt;
        the padding (segment -1, position 0) writes its keys and values to the scratch row."""
        cap = self.max_len
        total = sum(len(p) for p in prompts)
        length = next(b for b in self.prefill_buckets if b >= total)
        host = torch.zeros(5 * cap + self.max_batch, dtype=torch.long)
        host[2 * cap : 3 * cap] = self.max_batch  # padding: the scratch row
        host[4 * cap : 5 * cap] = -1
        start = 0
        for j, (row, prompt, slot) in enumerate(zip(rows, prompts, slots)):
            end = start + len(prompt)
            host[start:end] = torch.as_tensor(prompt, dtype=torch.long)
            host[cap + start : cap + end] = torch.arange(len(prompt))
            host[2 * cap + start : 2 * cap + end] = row
            host[3 * cap + start : 3 * cap + end] = slot
            host[4 * cap + start : 4 * cap + end] = j
            host[5 * cap + j] = end - 1
            start = end
        self.prefill_in.copy_(host, non_blocking=False)
        lora = any(slots) and self.routing.version > 0
        if not self.graphs_on:
            return self._prefill_step(length, lora)[: len(rows)].clone()
        return self._graph(("prefill", length, lora), lambda: self._prefill_step(length, lora))[: len(rows)].clone()

    def _prefill_step(self, length: int, lora: bool) -> torch.Tensor:
        """The captured prefill of a pack padded to ``length``: logits ``[max_batch, V]`` at the pack's last-token
        indices (entries past the pack's prompts are the first token's, unused)."""
        cap, buffer = self.max_len, self.prefill_in
        ids = buffer[None, :length]
        positions, cache_rows = buffer[cap : cap + length], buffer[2 * cap : 2 * cap + length]
        token_slots, segments = buffer[3 * cap : 3 * cap + length], buffer[4 * cap : 4 * cap + length]
        last = buffer[5 * cap : 5 * cap + self.max_batch]
        same = segments[:, None] == segments[None, :]
        mask = (same & (positions[None, :] <= positions[:, None]))[None, None]  # causal inside each prompt

        def write(i, k, v):
            self.keys[i, cache_rows, :, positions] = k[0].transpose(0, 1)
            self.values[i, cache_rows, :, positions] = v[0].transpose(0, 1)

        def attend(i, q, k, v):
            return self._sdpa(q, k, v, attn_mask=mask)

        self._route(token_slots if lora else None, lora)
        try:
            hidden = self._forward(ids, positions[None, :], write, attend)
        finally:
            self._route(None, False)
        return self.model.lm_head(hidden[0].index_select(0, last))
