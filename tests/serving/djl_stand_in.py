"""A stand-in for ``djl_python``'s ``Input``/``Output`` (DJL's ``djl_python`` is not on PyPI, so it cannot be
installed here). It follows the real classes' behaviour as read in deepjavalibrary/djl-serving,
``engines/python/setup/djl_python/inputs.py`` and ``outputs.py``: properties and a keyed content list; a batch is
one ``Input`` with a ``batch_size`` property and ``batch_NNN_`` prefixed keys that ``get_batches`` splits; an
``Output`` carries one ``code`` and ``message`` for the whole call. :func:`client_sees` models the frontend:
every item of a call gets the call's code (the behaviour the project checked on DJL, see the serving README)."""

from __future__ import annotations

import json
import types


class PairList:
    def __init__(self) -> None:
        self.keys: list[str | None] = []
        self.values: list[bytes] = []

    def add(self, key: str | None, value: bytes) -> None:
        self.keys.append(key)
        self.values.append(value)

    def key_at(self, i: int) -> str | None:
        return self.keys[i]

    def value_at(self, i: int) -> bytes:
        return self.values[i]

    def size(self) -> int:
        return len(self.keys)

    def is_empty(self) -> bool:
        return not self.keys

    def get(self, key: str) -> bytes | None:
        return next((v for k, v in zip(self.keys, self.values) if k == key), None)


class Input:
    def __init__(self) -> None:
        self.properties: dict[str, str] = {}
        self.content = PairList()

    def get_batches(self) -> list[Input]:
        if "batch_size" not in self.properties:
            return [self]
        batch = [Input() for _ in range(int(self.properties["batch_size"]))]
        for key, value in self.properties.items():
            if key.startswith("batch_") and key != "batch_size":
                batch[int(key[6:9])].properties[key[10:]] = value
        for key, value in zip(self.content.keys, self.content.values):
            batch[int(key[6:9])].content.add(key[10:], value)
        return batch

    def get_properties(self) -> dict[str, str]:
        return self.properties

    def get_content(self) -> PairList:
        return self.content

    def get_as_bytes(self, key: str | None = None) -> bytes | None:
        if self.content.is_empty():
            return None
        return self.content.get(key or "data") or self.content.value_at(0)

    def is_empty(self) -> bool:
        return self.content.is_empty()


class Output:
    def __init__(self, code: int = 200, message: str = "OK") -> None:
        self.code, self.message = code, message
        self.properties: dict[str, str] = {}
        self.content = PairList()

    def set_code(self, code: int) -> Output:
        self.code = code
        return self

    def set_message(self, message: str) -> Output:
        self.message = message
        return self

    def add_property(self, key: str, value: str) -> Output:
        self.properties[key] = value
        return self

    def add_as_json(self, value: object, key: str | None = None) -> Output:
        self.content.add(key, json.dumps(value, ensure_ascii=False).encode("utf-8"))
        return self


def module() -> types.ModuleType:
    stand_in = types.ModuleType("djl_python")
    stand_in.Input, stand_in.Output = Input, Output
    return stand_in


def request(body: bytes, headers: dict[str, str] | None = None, model_dir: str | None = None) -> Input:
    """One request as DJL hands it to ``handle`` with ``batch_size=1``: headers as properties, the body as data."""
    item = Input()
    item.properties.update(headers or {})
    if model_dir:
        item.properties["model_dir"] = model_dir
    item.content.add("data", body)
    return item


def batch(requests: list[tuple[bytes, dict[str, str]]]) -> Input:
    """Several requests in one call, as DJL sends them with ``batch_size`` > 1."""
    call = Input()
    call.properties["batch_size"] = str(len(requests))
    for i, (body, headers) in enumerate(requests):
        for key, value in headers.items():
            call.properties[f"batch_{i:03d}_{key}"] = value
        call.content.add(f"batch_{i:03d}_data", body)
    return call


def client_sees(output: Output) -> list[tuple[int, object]]:
    """What each client of the call receives: the call's code, and its item's body."""
    return [(output.code, json.loads(output.content.value_at(i))) for i in range(output.content.size())]
