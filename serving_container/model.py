"""DJL Serving's Python engine entry (``option.entryPoint=model.py``): a thin door into ``loraops_serving``.

DJL hands ``handle`` one request, or several when ``batch_size`` > 1 (``inputs.get_batches()``); they run as one
mixed-adapter batch and each gets its own reply. The engine is built on the first call (DJL's warm-up), from
``/opt/ml/model`` and the adapters under it and the additional model data sources. Module state is DJL's
contract: one engine per worker process.
"""

from __future__ import annotations

from pathlib import Path

from djl_python import Input, Output

from loraops_serving.engine import Engine
from loraops_serving.service import Reply, Service
from loraops_serving.settings import ServingSettings

service: Service | None = None


def _start(properties: dict[str, str]) -> Service:
    model_dir = Path(properties.get("model_dir", "/opt/ml/model"))
    return Service(Engine(model_dir, ServingSettings.from_environment()))


def handle(inputs: Input) -> Output | None:
    global service
    if service is None:
        service = _start(inputs.get_properties())
    if inputs.is_empty():  # DJL's warm-up call
        return None
    batch = inputs.get_batches()
    parsed = [service.parse(item.get_as_bytes(), item.get_properties()) for item in batch]
    runnable = [p for p in parsed if not isinstance(p, Reply)]
    results = iter(service.run(runnable))
    replies = [p if isinstance(p, Reply) else next(results) for p in parsed]
    outputs = Output()
    for i, reply in enumerate(replies):
        body = reply.body if reply.status == 200 else {**reply.body, "code": reply.status}
        outputs.add_as_json(body, key=inputs.get_content().key_at(i))
    if len(replies) == 1 and replies[0].status != 200:
        outputs.set_code(replies[0].status)
    return outputs
