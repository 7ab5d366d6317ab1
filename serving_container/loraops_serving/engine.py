"""The model behind the endpoint: a merged model or a base with adapters in slots, and the two forwards a
step-level scheduler needs (``scheduler.py`` runs them).

* :meth:`Engine.prefill` runs new rows' prompts and returns a running batch holding their KV cache;
* :meth:`Engine.decode_step` is one forward over the running batch: one new token per row, against the cache;
* :meth:`Engine.merge` lets rows join a running batch and its ``select`` lets them leave, between steps.

The forwards are the backend's (``backends.py``, ``LORAOPS_DECODE_BACKEND``): on CUDA the static-cache step
captured as CUDA graphs (``GraphBackend``), on the CPU, or for a model that step does not implement, transformers'
eager forward (``EagerBackend``).

Each row names its adapter; the adapted layers apply each row's adapter (``multi_lora``). Every adapter is read
and checked at start-up (an adapter the engine cannot serve exactly is refused with the reason and the others
serve); adapters are then loaded into at most ``max_resident_adapters`` slots when first asked for, least
recently used out first, never one that a running row uses.
"""

from __future__ import annotations

import logging
import threading
from collections import Counter, OrderedDict
from pathlib import Path

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from loraops_serving.backends import Batch, make_backend
from loraops_serving.layouts import LayoutError, base_digest, find_adapters, read_adapter
from loraops_serving.multi_lora import AdapterWeights, MultiLoRALinear, Routing
from loraops_serving.schema import BadRequest, RequestError, Sampling, UnknownAdapter
from loraops_serving.sequence import Generation, Row, Sequence
from loraops_serving.settings import ServingSettings

log = logging.getLogger("loraops_serving")

__all__ = ["Batch", "Engine", "Generation", "Row", "Sequence"]


class Engine:
    def __init__(self, model_dir: Path, settings: ServingSettings, adapter_dirs: list[Path] | None = None) -> None:
        self.model_dir, self.settings = Path(model_dir), settings
        if not (self.model_dir / "config.json").is_file():
            raise LayoutError(f"{self.model_dir}: no config.json (not a Hugging Face model folder)")
        dtype = settings.dtype
        if dtype == "auto":
            dtype = "bfloat16" if torch.cuda.is_available() else "float32"
        self.device = "cuda" if torch.cuda.is_available() else "cpu"
        # Only the scheduler's thread tokenizes (a fast tokenizer shared across threads fails intermittently).
        self.tokenizer = AutoTokenizer.from_pretrained(self.model_dir)
        self.tokenizer.padding_side = "left"
        if self.tokenizer.pad_token is None:
            self.tokenizer.pad_token = self.tokenizer.eos_token
        self.model = AutoModelForCausalLM.from_pretrained(self.model_dir, dtype=getattr(torch, dtype))
        self.model.to(self.device).eval()
        self.context = getattr(self.model.config, "max_position_embeddings", None)
        self.base_digest = base_digest(self.model_dir)
        self.routing = Routing()
        self.layers: dict[str, MultiLoRALinear] = {}
        self.resident: OrderedDict[str, int] = OrderedDict()  # adapter -> slot, least recently used first
        self.in_use: Counter[str] = Counter()  # running rows per adapter (never evicted while > 0)
        self.lock = threading.Lock()
        self.available: dict[str, Path] = {}
        self.refused: dict[str, str] = {}  # adapter -> why it is not served
        for name, folder in find_adapters(self.model_dir, adapter_dirs).items():
            try:
                self.check_adapter(name, folder)
            except Exception as failure:  # one bad adapter is reported and skipped; the others serve
                log.error("adapter %s refused: %s", name, failure)
                self.refused[name] = str(failure)
            else:
                self.available[name] = folder
        # after the model is on its device; adapter layers added later are picked up (the graphs recaptured)
        self.backend = make_backend(
            settings.decode_backend,
            self.model,
            self.routing,
            self.lock,
            self.tokenizer.pad_token_id,
            max(settings.max_batch_size, settings.max_inputs),  # one request of max_inputs rows always fits
            min(settings.max_total_tokens, self.context or settings.max_total_tokens),
        )
        log.info("decode backend: %s", self.backend.name)
        self._scheduler = None

    # ------------------------------------------------------------------------------------------ adapters
    def check_adapter(self, name: str, folder: Path) -> AdapterWeights:
        """Read ``folder`` and check that this engine serves it exactly: a LoRA of this base's weights on its
        linear layers, with matching shapes. Raises :class:`LayoutError` with the reason."""
        adapter = read_adapter(name, Path(folder), self.base_digest, self.settings.allow_unverified_adapters)
        modules = dict(self.model.named_modules())
        for module, (a, b) in adapter.modules.items():
            base = modules.get(module)
            if isinstance(base, MultiLoRALinear):
                base = base.base
            if not isinstance(base, torch.nn.Linear):
                raise LayoutError(f"adapter {name} adapts {module}, which is no linear layer of the base")
            if a.shape != (adapter.rank, base.in_features) or b.shape != (base.out_features, adapter.rank):
                raise LayoutError(
                    f"adapter {name}: {module} has A {tuple(a.shape)} and B {tuple(b.shape)}; rank {adapter.rank} "
                    f"on a {base.in_features}->{base.out_features} layer needs A {(adapter.rank, base.in_features)} "
                    f"and B {(base.out_features, adapter.rank)}"
                )
        return adapter

    def require_adapter(self, name: str) -> None:
        """Raise :class:`UnknownAdapter` (404) naming the available adapters unless ``name`` is one."""
        if name not in self.available:
            why = f" (refused at load: {self.refused[name]})" if name in self.refused else ""
            raise UnknownAdapter(f"no adapter {name!r}{why}; available: {sorted(self.available)}")

    def _evict(self, name: str) -> None:
        if self.in_use[name]:
            return  # running rows still use it; it goes when they are done (release)
        slot = self.resident.pop(name, None)
        if slot is not None:
            for layer in self.layers.values():
                layer.put(slot, None, None, 0.0)

    def acquire(self, name: str | None) -> int | None:
        """The slot holding ``name`` (loading it if needed) for one more running row, or ``None`` when every
        slot is held by running rows (the row waits). Raises :class:`UnknownAdapter`."""
        if name is None:
            return 0
        with self.lock:
            self.require_adapter(name)
            if name not in self.resident:
                free = set(range(1, self.settings.max_resident_adapters + 1)) - set(self.resident.values())
                if not free:
                    idle = [n for n in self.resident if not self.in_use[n]]
                    if not idle:
                        return None
                    free = {self.resident.pop(idle[0])}
                slot = min(free)
                self._load(self.check_adapter(name, self.available[name]), slot)
                self.resident[name] = slot
            self.resident.move_to_end(name)
            self.in_use[name] += 1
            return self.resident[name]

    def release(self, name: str | None) -> None:
        if name is None:
            return
        with self.lock:
            self.in_use[name] -= 1
            if name not in self.available:
                self._evict(name)

    def _load(self, adapter: AdapterWeights, slot: int) -> None:
        modules = dict(self.model.named_modules())
        for module in adapter.target_names - set(self.layers):
            base = modules[module]
            parent, _, child = module.rpartition(".")
            layer = MultiLoRALinear(base, self.settings.max_resident_adapters + 1, adapter.rank, self.routing)
            setattr(modules[parent] if parent else self.model, child, layer)
            self.layers[module] = layer
        for module, layer in self.layers.items():
            a, b = adapter.modules.get(module, (None, None))
            layer.put(slot, a, b, adapter.scale)

    # ---------------------------------------------------------------------------------------- generation
    def encode(self, row: Row) -> list[int]:
        """The prompt's token ids; raises :class:`BadRequest` when prompt and new tokens exceed the context."""
        ids = self.tokenizer(row.prompt)["input_ids"]
        if self.context and len(ids) + row.max_new_tokens > self.context:
            raise BadRequest(f"{len(ids)} prompt tokens + {row.max_new_tokens} new exceed the {self.context} context")
        cache = self.backend.max_len
        if cache is not None and len(ids) + row.max_new_tokens > cache:
            raise BadRequest(
                f"{len(ids)} prompt tokens + {row.max_new_tokens} new exceed the {cache} tokens a request may hold "
                "in the static KV cache (LORAOPS_MAX_TOTAL_TOKENS)"
            )
        return ids

    def prefill(self, seqs: list[Sequence]):
        """One forward over the new rows' prompts: a running batch of them with their next-token logits."""
        return self.backend.prefill(seqs)

    def decode_step(self, batch, tokens: list[int]):
        """One forward over the running batch: each row's newest token (``tokens[i]`` for ``batch.seqs[i]``)."""
        return self.backend.decode_step(batch, tokens)

    def merge(self, running, joining):
        """One running batch of ``running`` (or ``None``) and ``joining`` rows."""
        return self.backend.merge(running, joining)

    def decode(self, tokens: list[int]) -> str:
        return self.tokenizer.decode(tokens, skip_special_tokens=True)

    # ------------------------------------------------------------------------------------ convenience
    @property
    def scheduler(self):
        """The step-level scheduler over this engine (started on first use). Once it exists no lock is taken: the
        event loop asks for it on every request, while the worker holds ``lock`` for a whole forward."""
        if self._scheduler is None:
            with self.lock:
                if self._scheduler is None:
                    from loraops_serving.scheduler import Scheduler

                    self._scheduler = Scheduler(self)
        return self._scheduler

    def generate(self, rows: list[Row], sampling: Sampling | None = None, timeout: float = 600) -> list[Generation]:
        """Run ``rows`` (with ``sampling`` for all of them, if given) and wait; raises :class:`RequestError`."""
        if sampling is not None:
            rows = [Row(r.prompt, r.adapter, r.max_new_tokens, r.stop, sampling) for r in rows]
        ticket = self.scheduler.submit(rows)
        outcome = ticket.wait(timeout)
        if isinstance(outcome, RequestError):
            raise outcome
        return outcome
