"""One decode step over a running batch, at hardware speed: a static KV cache and, on CUDA, the step captured as CUDA
graphs, one per (batch bucket, attention-window bucket, adapters on/off); the prompts admitted in a step prefilled
packed into one sequence (several where they exceed ``max_len`` together), padded to a length bucket, also captured per
(bucket, adapters on/off) on CUDA (eager, all prompts at once as rows of one width, elsewhere).

The running batch is a set of cache rows ``0 .. max_batch-1``. A scheduler gives each request a free row, calls
:meth:`GraphDecoder.prefill` once for the requests it admits (writes their prompts' keys and values into their rows
and returns the logits of each prompt's last token), then :meth:`GraphDecoder.decode` once per step with, for each
row ``0 .. n-1``, the token to feed, its position (the number of tokens already in the row's cache) and its adapter
slot; a row that is free in between is passed with position ``-1``. Requests join and leave at any step boundary
without changing a shape: the inputs are copied into static device buffers that the graphs read, adapter slots
included (``Routing.rows`` points at the slot buffer), so mixing adapters replays the same graph.

On CUDA the projections run as fused groups (``multi_lora.FusedGroup``: q/k/v and gate/up one product each, every
slot's ``A`` under the weights, one grouped Triton expand per group); elsewhere the layers' own forward runs, or the
same groups with the torch expand when ``grouped=True`` (what the CPU tests hold against peft).

Keys and values of idle rows are written to a scratch row, never to a row someone owns. Each graph attends over a
window of the cache (the smallest bucket that holds the longest running row), so a step reads only what is used.

Llama-layout decoders only (Llama, Mistral without sliding window, Qwen2): RMSNorm, rotary positions, ``q/k/v/o``
projections and a gated MLP, which is what :meth:`check_supported` verifies. On the CPU the same step runs eagerly:
that is the reference the tests hold against transformers' ``generate`` and peft.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch.nn import functional as F

from loraops_serving.graph_pieces import Pieces, buckets
from loraops_serving.graph_prefill import PrefillMixin
from loraops_serving.multi_lora import FusedGroup, MultiLoRALinear, Routing
from loraops_serving.ops import triton_available

SUPPORTED = ("llama", "mistral", "qwen2")


class GraphDecoder(PrefillMixin):
    """Static KV cache + decode step (CUDA graphs on CUDA, eager elsewhere) for ``model`` and its ``routing``."""

    def __init__(
        self,
        model,
        routing: Routing | None = None,
        max_batch: int = 32,
        max_len: int = 1024,
        graphs: bool | None = None,
        window_first: int = 128,
        fuse: bool | None = None,
        grouped: bool | None = None,
        bucketed_prefill: bool | None = None,
    ) -> None:
        self.check_supported(model)
        self.model, self.routing = model, routing or Routing()
        self.max_batch, self.max_len = max_batch, max_len
        first = next(iter(model.parameters()))
        self.device, self.dtype = first.device, first.dtype
        self.graphs_on = self.device.type == "cuda" if graphs is None else graphs
        config = model.config
        self.layers = model.model.layers
        attn = self.layers[0].self_attn
        self.head_dim = attn.head_dim
        self.heads, self.kv_heads = config.num_attention_heads, config.num_key_value_heads
        # one extra row: the scratch row that idle rows write to
        shape = (len(self.layers), max_batch + 1, self.kv_heads, max_len, self.head_dim)
        self.keys = torch.zeros(shape, device=self.device, dtype=self.dtype)
        self.values = torch.zeros(shape, device=self.device, dtype=self.dtype)
        self.batch_buckets = buckets(max_batch, 1)
        self.window_buckets = buckets(max_len, min(window_first, max_len))
        # static inputs of the graphs
        self.tokens = torch.zeros(max_batch, dtype=torch.long, device=self.device)
        self.positions = torch.full((max_batch,), -1, dtype=torch.long, device=self.device)
        self.slots = torch.zeros(max_batch, dtype=torch.long, device=self.device)
        # packed prefill: the admitted prompts end to end, right-padded to a length bucket, from static buffers (a
        # CUDA graph per bucket on CUDA); per token [ids | positions | cache rows | slots | segments], then the
        # index of each prompt's last token
        self.bucketed_prefill = self.graphs_on if bucketed_prefill is None else bucketed_prefill
        self.prefill_buckets = buckets(max_len, min(16, max_len))
        self.prefill_in = torch.zeros(5 * max_len + max_batch, dtype=torch.long, device=self.device)
        self.captured: dict[tuple[int, int, bool], tuple[torch.cuda.CUDAGraph, torch.Tensor]] = {}
        # q/k/v and gate/up as one product each, every slot's A under the weights, one grouped expand per group
        self.grouped = self.device.type == "cuda" if grouped is None else grouped
        self.kernel = self.device.type == "cuda" and triton_available()
        self.groups: list[dict[str, FusedGroup]] | None = None
        self.groups_version = -1
        self._sync_groups()
        self.captured_version = self.routing.version
        self.pool = torch.cuda.graph_pool_handle() if self.graphs_on else None
        self.pieces = Pieces(self.device.type == "cuda" if fuse is None else fuse)

    @staticmethod
    def check_supported(model) -> None:
        """Raise ``ValueError`` unless ``model`` is a Llama-layout decoder this step implements."""
        config = model.config
        if config.model_type not in SUPPORTED:
            raise ValueError(f"graph decode supports {SUPPORTED}, not {config.model_type!r}")
        if getattr(config, "sliding_window", None) and getattr(config, "use_sliding_window", True):
            raise ValueError("graph decode has no sliding-window attention")
        if getattr(config, "hidden_act", "silu") != "silu":
            raise ValueError(f"graph decode has a SiLU-gated MLP, not {config.hidden_act!r}")
        norm = model.model.norm
        if not hasattr(norm, "variance_epsilon") or not type(norm).__name__.endswith("RMSNorm"):
            raise ValueError(f"graph decode needs Llama's RMSNorm, not {type(norm).__name__}")
        rope = getattr(model.model.rotary_emb, "rope_type", "default")
        if "dynamic" in rope:
            raise ValueError(f"graph decode needs static rotary frequencies, not {rope!r}")

    # ------------------------------------------------------------------------------------------ the layers
    def _sync_groups(self) -> None:
        """(Re)build the fused groups when the adapted layers changed (their tensors are new)."""
        if not self.grouped or self.groups_version == self.routing.version:
            return
        self.groups = None
        names = {"qkv": ("q_proj", "k_proj", "v_proj"), "o": ("o_proj",), "gate_up": ("gate_proj", "up_proj")}
        names["down"] = ("down_proj",)
        members = []
        for layer in self.layers:
            parts = {"qkv": layer.self_attn, "o": layer.self_attn, "gate_up": layer.mlp, "down": layer.mlp}
            members.append({key: [getattr(parts[key], n) for n in ns] for key, ns in names.items()})
        plain = all(
            type(m.base if isinstance(m, MultiLoRALinear) else m) is torch.nn.Linear
            for layer in members
            for group in layer.values()
            for m in group
        )
        if plain:  # quantized or custom layers keep their own forward
            self.groups = [{key: FusedGroup(group) for key, group in layer.items()} for layer in members]
        self.groups_version = self.routing.version

    def _forward(self, ids: torch.Tensor, positions: torch.Tensor, write, attend) -> torch.Tensor:
        """Hidden states after the final norm for ``ids [B, T]`` at ``positions [B, T]``; ``write(i, k, v)`` stores
        layer ``i``'s keys and values, ``attend(i, q, k, v)`` returns its attention output ``[B, H, T, D]``."""
        model, pieces = self.model.model, self.pieces
        hidden = model.embed_tokens(ids)
        cos, sin = model.rotary_emb(hidden, positions)
        batch, length = ids.shape
        norms = [norm for layer in self.layers for norm in (layer.input_layernorm, layer.post_attention_layernorm)]
        norms.append(model.norm)
        x = pieces.rms_norm(hidden, norms[0].weight, norms[0].variance_epsilon)
        rows = self.routing.rows if self.routing.active else None
        token_slots = rows  # one slot per token (a packed prefill routes each token already)
        if rows is not None and rows.numel() != batch * length:
            token_slots = rows[:, None].expand(-1, length).contiguous().view(-1)
        if rows is not None and length > 1 and rows.numel() == batch * length:  # the layers see one token a row

            def lin(layer, t: torch.Tensor) -> torch.Tensor:
                return layer(t.reshape(-1, 1, t.shape[-1])).view(batch, length, -1)
        else:

            def lin(layer, t: torch.Tensor) -> torch.Tensor:
                return layer(t)

        for i, layer in enumerate(self.layers):
            attn, mlp = layer.self_attn, layer.mlp
            if self.groups is not None:
                group = self.groups[i]
                q, k, v = group["qkv"](x, token_slots, self.kernel)
            else:
                q, k, v = lin(attn.q_proj, x), lin(attn.k_proj, x), lin(attn.v_proj, x)
            q = q.view(batch, length, -1, self.head_dim).transpose(1, 2)
            k = k.view(batch, length, -1, self.head_dim).transpose(1, 2)
            v = v.view(batch, length, -1, self.head_dim).transpose(1, 2)
            q, k = pieces.rope(q, k, cos, sin)
            write(i, k, v)
            out = attend(i, q, k, v).transpose(1, 2).reshape(batch, length, -1)
            norm = norms[2 * i + 1]
            out = group["o"](out, token_slots, self.kernel)[0] if self.groups is not None else lin(attn.o_proj, out)
            hidden, x = pieces.add_rms_norm(hidden, out, norm.weight, norm.variance_epsilon)
            if self.groups is not None:
                gate, up = group["gate_up"](x, token_slots, self.kernel)
                out = group["down"](pieces.silu_mul(gate, up), token_slots, self.kernel)[0]
            else:
                out = lin(mlp.down_proj, pieces.silu_mul(lin(mlp.gate_proj, x), lin(mlp.up_proj, x)))
            norm = norms[2 * i + 2]
            hidden, x = pieces.add_rms_norm(hidden, out, norm.weight, norm.variance_epsilon)
        return x

    def _sdpa(self, q, k, v, **kw) -> torch.Tensor:
        gqa = {"enable_gqa": True} if self.kv_heads != self.heads else {}
        return F.scaled_dot_product_attention(q, k, v, **kw, **gqa)

    # ---------------------------------------------------------------------------------------------- decode
    def _step(self, batch: int, window: int) -> torch.Tensor:
        """The captured step: rows ``0 .. batch-1`` of the static buffers, attending over ``window`` positions."""
        positions = self.positions[:batch]
        idle = positions < 0
        where = positions.clamp(min=0)
        write_rows = torch.where(idle, self.max_batch, torch.arange(batch, device=self.device))
        visible = torch.arange(window, device=self.device)[None, :] <= where[:, None]  # [B, W]
        mask = visible[:, None, None, :]

        def write(i, k, v):
            self.keys[i, write_rows, :, where] = k[:, :, 0]
            self.values[i, write_rows, :, where] = v[:, :, 0]

        def attend(i, q, k, v):
            return self._sdpa(q, self.keys[i, :batch, :, :window], self.values[i, :batch, :, :window], attn_mask=mask)

        hidden = self._forward(self.tokens[:batch, None], where[:, None], write, attend)
        return self.model.lm_head(hidden[:, 0])

    def _route(self, rows: torch.Tensor | None, active: bool) -> None:
        self.routing.rows, self.routing.active = rows, active

    @torch.no_grad()
    def decode(self, tokens, positions, slots) -> torch.Tensor:
        """One step for rows ``0 .. n-1`` (``n = len(tokens)``): feed ``tokens[i]`` at ``positions[i]`` (``-1``: the
        row is idle) with adapter slot ``slots[i]``; returns the logits ``[n, vocab]``. On CUDA the result is a view
        of the graph's output buffer, valid until the next call."""
        n = len(tokens)
        if not 1 <= n <= self.max_batch or len(positions) != n or len(slots) != n:
            raise ValueError(f"decode takes 1..{self.max_batch} rows with one token, position and slot each")
        tokens, positions, slots = (torch.as_tensor(t, dtype=torch.long) for t in (tokens, positions, slots))
        top = int(positions.max()) if positions.device.type == "cpu" else None
        if top is not None and top >= self.max_len:
            raise ValueError(f"position {top} is past the cache ({self.max_len} positions)")
        batch = next(b for b in self.batch_buckets if b >= n)
        self._sync_groups()
        self.tokens[:n].copy_(tokens, non_blocking=True)
        self.positions[:n].copy_(positions, non_blocking=True)
        self.slots[:n].copy_(slots, non_blocking=True)
        self.positions[n:batch].fill_(-1)
        self.slots[n:batch].fill_(0)
        if top is None:
            top = int(self.positions[:n].max())
        window = next(w for w in self.window_buckets if w > top)
        lora = bool(slots.any()) and self.routing.version > 0
        self._route(self.slots[:batch], lora)
        try:
            if not self.graphs_on:
                return self._step(batch, window)[:n]
            return self._replay(batch, window, lora)[:n]
        finally:
            self._route(None, False)

    def _replay(self, batch: int, window: int, lora: bool) -> torch.Tensor:
        return self._graph((batch, window, lora), lambda: self._step(batch, window))

    def _graph(self, key: tuple, step) -> torch.Tensor:
        """Replay the graph of ``key`` (captured from ``step()`` the first time); its output buffer."""
        if self.routing.version != self.captured_version:  # adapted layers changed: old graphs hold stale tensors
            self.captured.clear()
            self.pool = torch.cuda.graph_pool_handle()  # the old pool is released with its graphs
            self.captured_version = self.routing.version
        if key not in self.captured:
            self.captured[key] = self._capture(step)
        graph, out = self.captured[key]
        graph.replay()
        return out

    def _capture(self, step) -> tuple[torch.cuda.CUDAGraph, torch.Tensor]:
        """Capture ``step()``. The warm-up run computes the very step about to be replayed (same buffers), so it
        writes only what the replay writes again."""
        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):
            step()
        torch.cuda.current_stream().wait_stream(side)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph, pool=self.pool):
            out = step()
        return graph, out

    def warm_up(self, batches: Sequence[int] | None = None, windows: Sequence[int] | None = None) -> int:
        """Capture the graphs ahead of traffic (all rows idle, so nothing owned is written; with neither argument,
        the prefill buckets too, into the scratch row); returns how many."""
        if not self.graphs_on:
            return 0
        self._sync_groups()
        count = 0
        for batch in batches or self.batch_buckets:
            for window in windows or self.window_buckets:
                for lora in (False, True) if self.routing.version > 0 else (False,):
                    self.positions[:batch].fill_(-1)
                    self.slots[:batch].fill_(1 if lora else 0)
                    self._route(self.slots[:batch], lora)
                    try:
                        self._replay(batch, window, lora)
                    finally:
                        self._route(None, False)
                    count += 1
        self.slots.zero_()
        if self.bucketed_prefill and batches is None and windows is None:  # every prefill bucket, scratch row
            for length in self.prefill_buckets:
                for lora in (False, True) if self.routing.version > 0 else (False,):
                    cap = self.max_len  # all padding: scratch row, segment -1
                    self.prefill_in.zero_()
                    self.prefill_in[2 * cap : 3 * cap] = self.max_batch
                    self.prefill_in[3 * cap : 4 * cap] = int(lora)
                    self.prefill_in[4 * cap : 5 * cap] = -1
                    self._graph(("prefill", length, lora), lambda: self._prefill_step(length, lora))  # noqa: B023
                    count += 1
        return count
