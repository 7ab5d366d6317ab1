"""The request schema, one for every engine: ``{"inputs": str | [str], "parameters": {...}, "adapter": str,
"adapters": str | [str], "stream": bool}``, checked field by field; anything else is a :class:`BadRequest`
(HTTP 400) naming the field.

The adapter may be named the loraops way (``adapter``), the LMI way (``adapters``: one name, or one per input
where ``""`` means the base model) or in SageMaker's ``X-Amzn-SageMaker-Adapter-Identifier`` header, which LMI
reads too; several that disagree are refused rather than one silently winning."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

from loraops_serving.settings import ServingSettings

ADAPTER_HEADER = "x-amzn-sagemaker-adapter-identifier"
FIELDS = {"inputs", "parameters", "adapter", "adapters", "stream"}


class RequestError(Exception):
    status = 400


class BadRequest(RequestError):
    status = 400


class UnknownAdapter(RequestError):
    status = 404


@dataclass(frozen=True)
class Sampling:
    """How one row samples its next token (each row in flight samples with its own; ``max_new_tokens`` and ``stop``
    are per row too)."""

    do_sample: bool = False
    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = 0
    repetition_penalty: float = 1.0
    seed: int | None = None


@dataclass(frozen=True)
class Request:
    inputs: list[str]
    adapters: tuple[str | None, ...]  # one per input; None: the base model
    sampling: Sampling
    max_new_tokens: int
    stop: tuple[str, ...] = ()
    stream: bool = False
    single: bool = True  # inputs was a string: answer with one object, not a list
    extra: dict[str, Any] = field(default_factory=dict)


def _number(params: dict, name: str, kind: type, low: float, high: float, default: Any) -> Any:
    value = params.get(name, default)
    if value is None:
        return default
    if isinstance(value, bool) or not isinstance(value, (int, float)) or (kind is int and not isinstance(value, int)):
        raise BadRequest(f"parameters.{name} must be a{'n integer' if kind is int else ' number'}, got {value!r}")
    if not low <= value <= high:
        raise BadRequest(f"parameters.{name}={value} is outside [{low}, {high}]")
    return kind(value)


def _utf8(value: str, name: str) -> str:
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        raise BadRequest(f"{name} is not valid Unicode (a lone surrogate such as \\ud800)") from None
    return value


def _adapters(data: dict, headers: dict[str, str], n: int) -> tuple[str | None, ...]:
    """One adapter (or None) per input from ``adapter``, ``adapters`` and the SageMaker header."""
    named: dict[str, tuple[str | None, ...]] = {}
    if "adapter" in data and data["adapter"] is not None:
        one = data["adapter"]
        if not isinstance(one, str) or not one:
            raise BadRequest("adapter must be a non-empty string (or absent, for the base model)")
        named["adapter"] = (one,) * n
    if "adapters" in data and data["adapters"] is not None:
        many = data["adapters"]
        many = [many] * n if isinstance(many, str) else many
        if not isinstance(many, list) or not all(isinstance(a, str) for a in many):
            raise BadRequest("adapters must be a string or a list of strings, one per input")
        if len(many) != n:
            raise BadRequest(f"adapters names {len(many)} adapters for {n} inputs; give one per input")
        named["adapters"] = tuple(a or None for a in many)
    if header := headers.get(ADAPTER_HEADER):
        named["the X-Amzn-SageMaker-Adapter-Identifier header"] = (header,) * n
    if len(set(named.values())) > 1:
        raise BadRequest(f"{' and '.join(named)} name different adapters; name them once")
    chosen = next(iter(named.values()), (None,) * n)
    for adapter in chosen:
        if adapter is not None:
            _utf8(adapter, "adapter")
    return chosen


def parse(body: bytes, headers: dict[str, str], settings: ServingSettings) -> Request:
    try:
        data = json.loads(body or b"null")
    except (ValueError, UnicodeDecodeError) as error:
        raise BadRequest(f"the body is not JSON: {error}") from None
    except RecursionError:
        raise BadRequest("the body is nested too deeply") from None
    if not isinstance(data, dict):
        raise BadRequest('the body must be a JSON object such as {"inputs": "..."}')
    if unknown := sorted(set(data) - FIELDS):
        raise BadRequest(f"unknown fields {unknown}; allowed: {sorted(FIELDS)}")
    inputs = data.get("inputs")
    single = isinstance(inputs, str)
    prompts = [inputs] if single else inputs
    if not isinstance(prompts, list) or not prompts or not all(isinstance(p, str) and p for p in prompts):
        raise BadRequest("inputs must be a non-empty string or a non-empty list of non-empty strings")
    if len(prompts) > settings.max_inputs:
        raise BadRequest(f"{len(prompts)} inputs; at most {settings.max_inputs} per request")
    if too_long := [i for i, p in enumerate(prompts) if len(p) > settings.max_input_chars]:
        raise BadRequest(f"inputs {too_long} are longer than {settings.max_input_chars} characters")
    for i, prompt in enumerate(prompts):
        _utf8(prompt, f"inputs[{i}]")
    params = data.get("parameters") or {}
    if not isinstance(params, dict):
        raise BadRequest("parameters must be an object")
    allowed = {"max_new_tokens", "temperature", "top_p", "top_k", "repetition_penalty", "seed", "stop", "do_sample"}
    if unknown := sorted(set(params) - allowed):
        raise BadRequest(f"unknown parameters {unknown}; allowed: {sorted(allowed)}")
    max_new = _number(params, "max_new_tokens", int, 1, settings.max_new_tokens, settings.default_max_new_tokens)
    temperature = _number(params, "temperature", float, 0.0, 2.0, 1.0)
    top_p = _number(params, "top_p", float, 1e-6, 1.0, 1.0)
    top_k = _number(params, "top_k", int, 0, 1000, 0)
    penalty = _number(params, "repetition_penalty", float, 1.0, 2.0, 1.0)
    seed = _number(params, "seed", int, 0, 2**32 - 1, None)
    do_sample = params.get("do_sample")
    if do_sample is not None and not isinstance(do_sample, bool):
        raise BadRequest("parameters.do_sample must be true or false")
    sample = do_sample if do_sample is not None else ("temperature" in params and temperature > 0)
    if sample and temperature == 0:
        raise BadRequest("parameters.temperature must be above 0 when sampling")
    stop = params.get("stop") or []
    stop = [stop] if isinstance(stop, str) else stop
    if not isinstance(stop, list) or len(stop) > 4 or not all(isinstance(s, str) and 0 < len(s) <= 64 for s in stop):
        raise BadRequest("parameters.stop must be a string or at most 4 strings of 1-64 characters")
    for s in stop:
        _utf8(s, "parameters.stop")
    adapters = _adapters(data, headers, len(prompts))
    stream = data.get("stream", False)
    if not isinstance(stream, bool):
        raise BadRequest("stream must be true or false")
    if stream and not single:
        raise BadRequest("stream answers one input; send inputs as a string")
    sampling = Sampling(
        do_sample=sample,
        temperature=temperature if sample else 1.0,
        top_p=top_p if sample else 1.0,
        top_k=top_k if sample else 0,
        repetition_penalty=penalty,
        seed=seed if sample else None,
    )
    return Request(prompts, adapters, sampling, max_new, tuple(stop), stream, single)
