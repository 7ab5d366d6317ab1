"""The model behind the endpoint: a merged model or a base with adapters in slots, generating for mixed batches.

:meth:`Engine.generate` takes rows that share sampling parameters and may each name a different adapter; all of
them run in one ``generate`` call, the adapted layers applying each row's adapter (``multi_lora``). Adapters are
read when first asked for and kept in at most ``max_resident_adapters`` slots, least recently used out first.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from loraops_serving.layouts import LayoutError, base_digest, find_adapters, read_adapter
from loraops_serving.multi_lora import AdapterWeights, MultiLoRALinear, Routing
from loraops_serving.schema import Sampling, UnknownAdapter
from loraops_serving.settings import ServingSettings


@dataclass(frozen=True)
class Row:
    prompt: str
    adapter: str | None
    max_new_tokens: int
    stop: tuple[str, ...] = ()


@dataclass(frozen=True)
class Generation:
    text: str
    tokens: int
    finish_reason: str  # "length" | "stop" | "eos"


class Engine:
    def __init__(self, model_dir: Path, settings: ServingSettings, adapter_dirs: list[Path] | None = None) -> None:
        self.model_dir, self.settings = Path(model_dir), settings
        if not (self.model_dir / "config.json").is_file():
            raise LayoutError(f"{self.model_dir}: no config.json (not a Hugging Face model folder)")
        dtype = settings.dtype
        if dtype == "auto":
            dtype = "bfloat16" if torch.cuda.is_available() else "float32"
        self.device = "cuda" if torch.cuda.is_available() else "cpu"
        self.tokenizer = AutoTokenizer.from_pretrained(self.model_dir)
        self.tokenizer.padding_side = "left"  # generation continues every row at its own end
        if self.tokenizer.pad_token is None:
            self.tokenizer.pad_token = self.tokenizer.eos_token
        self.model = AutoModelForCausalLM.from_pretrained(self.model_dir, dtype=getattr(torch, dtype))
        self.model.to(self.device).eval()
        self.base_digest = base_digest(self.model_dir)
        self.available = find_adapters(self.model_dir, adapter_dirs)
        for name, folder in self.available.items():  # refuse at start-up an adapter of another base
            read_adapter(name, folder, self.base_digest)
        self.routing = Routing()
        self.layers: dict[str, MultiLoRALinear] = {}
        self.resident: OrderedDict[str, int] = OrderedDict()  # adapter -> slot, least recently used first
        self.lock = threading.Lock()

    # ------------------------------------------------------------------------------------------ adapters
    def add_adapter(self, name: str, folder: Path) -> None:
        """Make an adapter available at run time (an adapter inference component arrived); checked now."""
        read_adapter(name, Path(folder), self.base_digest)
        with self.lock:
            self.available[name] = Path(folder)
            self._evict(name)

    def remove_adapter(self, name: str) -> None:
        with self.lock:
            self.available.pop(name, None)
            self._evict(name)

    def require_adapter(self, name: str) -> None:
        """Raise :class:`UnknownAdapter` (404) naming the available adapters unless ``name`` is one."""
        if name not in self.available:
            raise UnknownAdapter(f"no adapter {name!r}; available: {sorted(self.available)}")

    def _evict(self, name: str) -> None:
        slot = self.resident.pop(name, None)
        if slot is not None:
            for layer in self.layers.values():
                layer.put(slot, None, None, 0.0)

    def _slot(self, name: str | None) -> int:
        if name is None:
            return 0
        self.require_adapter(name)
        if name in self.resident:
            self.resident.move_to_end(name)
            return self.resident[name]
        free = set(range(1, self.settings.max_resident_adapters + 1)) - set(self.resident.values())
        if not free:
            _, slot = self.resident.popitem(last=False)
        else:
            slot = min(free)
        self._load(read_adapter(name, self.available[name], self.base_digest), slot)
        self.resident[name] = slot
        return slot

    def _load(self, adapter: AdapterWeights, slot: int) -> None:
        modules = dict(self.model.named_modules())
        for module in adapter.target_names - set(self.layers):
            base = modules.get(module)
            if not isinstance(base, torch.nn.Linear):
                raise LayoutError(f"adapter {adapter.name} adapts {module}, which is no linear layer of the base")
            parent, _, child = module.rpartition(".")
            layer = MultiLoRALinear(base, self.settings.max_resident_adapters + 1, adapter.rank, self.routing)
            setattr(modules[parent] if parent else self.model, child, layer)
            self.layers[module] = layer
        for module, layer in self.layers.items():
            a, b = adapter.modules.get(module, (None, None))
            layer.put(slot, a, b, adapter.scale)

    # ---------------------------------------------------------------------------------------- generation
    def check_length(self, rows: list[Row]) -> None:
        """Raise ``ValueError`` naming the row whose prompt and new tokens exceed the model's context."""
        limit = getattr(self.model.config, "max_position_embeddings", None)
        if not limit:
            return
        for i, row in enumerate(rows):
            n = len(self.tokenizer(row.prompt)["input_ids"])
            if n + row.max_new_tokens > limit:
                raise ValueError(f"input {i}: {n} prompt tokens + {row.max_new_tokens} new exceed the {limit} context")

    @torch.no_grad()  # not inference_mode: adapter slots loaded here are updated in place later
    def generate(self, rows: list[Row], sampling: Sampling) -> list[Generation]:
        """All ``rows`` in one ``generate`` call, each with its own adapter, length and stop strings."""
        with self.lock:
            slots = [self._slot(row.adapter) for row in rows]
            batch = self.tokenizer([r.prompt for r in rows], return_tensors="pt", padding=True).to(self.device)
            self.routing.rows = torch.tensor(slots, device=self.device)
            self.routing.active = any(slots)
            if sampling.seed is not None:
                torch.manual_seed(sampling.seed)
            try:
                output = self.model.generate(
                    **batch, **self._options(sampling), max_new_tokens=max(r.max_new_tokens for r in rows)
                )
            finally:
                self.routing.rows, self.routing.active = None, False
        new_tokens = output[:, batch["input_ids"].shape[1] :]
        return [self._finish(tokens, row) for tokens, row in zip(new_tokens.tolist(), rows)]

    def stream(self, row: Row, sampling: Sampling):
        """Yield one row's text as it is generated (stop strings end the stream)."""
        from transformers import TextIteratorStreamer

        streamer = TextIteratorStreamer(self.tokenizer, skip_prompt=True, skip_special_tokens=True)
        worker = threading.Thread(target=self._generate_streamed, args=(row, sampling, streamer), daemon=True)
        worker.start()
        text = ""
        for piece in streamer:
            text += piece
            cuts = [text.index(s) for s in row.stop if s in text]
            if cuts:
                yield piece[: len(piece) - (len(text) - min(cuts))]
                break
            yield piece
        worker.join()

    def _generate_streamed(self, row: Row, sampling: Sampling, streamer) -> None:
        with self.lock, torch.no_grad():
            slot = self._slot(row.adapter)
            batch = self.tokenizer([row.prompt], return_tensors="pt").to(self.device)
            self.routing.rows, self.routing.active = torch.tensor([slot], device=self.device), slot > 0
            try:
                self.model.generate(
                    **batch, **self._options(sampling), max_new_tokens=row.max_new_tokens, streamer=streamer
                )
            finally:
                self.routing.rows, self.routing.active = None, False

    def _options(self, sampling: Sampling) -> dict:
        """``generate`` keyword arguments for ``sampling`` (sampling knobs only when sampling)."""
        knobs = dict(temperature=sampling.temperature, top_p=sampling.top_p, top_k=sampling.top_k)
        return {
            "do_sample": sampling.do_sample,
            **(knobs if sampling.do_sample else {}),
            "repetition_penalty": sampling.repetition_penalty,
            "pad_token_id": self.tokenizer.pad_token_id,
        }

    def _finish(self, tokens: list[int], row: Row) -> Generation:
        eos = self.tokenizer.eos_token_id
        reason = "length"
        if eos in tokens[: row.max_new_tokens]:
            tokens, reason = tokens[: tokens.index(eos)], "eos"
        tokens = tokens[: row.max_new_tokens]
        text = self.tokenizer.decode(tokens, skip_special_tokens=True)
        cuts = [text.index(s) for s in row.stop if s in text]
        if cuts:
            text, reason = text[: min(cuts)], "stop"
        return Generation(text, len(tokens), reason)
