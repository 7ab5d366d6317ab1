"""Serving limits and defaults, from ``LORAOPS_*`` environment variables (DJL passes ``serving.properties``
options through the same names) with the defaults below."""

from __future__ import annotations

import os
from dataclasses import dataclass, fields


@dataclass(frozen=True)
class ServingSettings:
    max_new_tokens: int = 512  # the most a request may ask for
    default_max_new_tokens: int = 128
    max_inputs: int = 16  # prompts in one request
    max_input_chars: int = 16_000
    max_batch_size: int = 16  # rows running together (requests join and leave between decode steps)
    max_body_bytes: int = 1_048_576  # larger bodies are refused (413) unread
    max_resident_adapters: int = 8  # adapters held in the layers' slots at once (LRU beyond)
    dtype: str = "auto"  # auto: bfloat16 on CUDA, float32 on CPU
    decode_backend: str = "auto"  # auto: graph on CUDA (eager for a model it does not implement), eager on CPU
    max_total_tokens: int = 1024  # prompt + new tokens of one request on the graph backend (its static KV cache)
    allow_unverified_adapters: bool = False  # serve adapters without a manifest naming the base's weights
    drain_seconds: float = 20.0  # after SIGTERM, requests in flight get this long, then fail (503) and it exits

    @classmethod
    def from_environment(cls, environ: dict[str, str] | None = None) -> ServingSettings:
        environ = os.environ if environ is None else environ
        values = {}
        for f in fields(cls):
            raw = environ.get(f"LORAOPS_{f.name.upper()}")
            if raw is not None:
                kind = type(f.default)
                try:
                    values[f.name] = _boolean(raw) if kind is bool else kind(raw)
                except ValueError:
                    raise ValueError(f"LORAOPS_{f.name.upper()}={raw!r} is not a {kind.__name__}") from None
        settings = cls(**values)
        if settings.max_resident_adapters < 1 or settings.max_batch_size < 1:
            raise ValueError("LORAOPS_MAX_RESIDENT_ADAPTERS and LORAOPS_MAX_BATCH_SIZE must be at least 1")
        if settings.decode_backend not in ("auto", "eager", "graph"):
            raise ValueError(f"LORAOPS_DECODE_BACKEND={settings.decode_backend!r} is none of auto, eager, graph")
        if settings.max_total_tokens < 2:
            raise ValueError("LORAOPS_MAX_TOTAL_TOKENS must be at least 2")
        return settings


def _boolean(raw: str) -> bool:
    if raw.strip().lower() in ("1", "true", "yes"):
        return True
    if raw.strip().lower() in ("0", "false", "no", ""):
        return False
    raise ValueError(raw)
