"""DJL Serving's Python engine entry (``option.entryPoint=model.py``): a thin door into ``loraops_serving``.

**One request per call** (``batch_size=1``, DJL's default, in ``serving.properties``): DJL's Python engine gives
every item of a batch the batch's one status code, so a batch cannot answer one request 200 and another 400.
With one request per call the status set here is the status the client gets. The price: DJL's Python engine
hands a worker one call at a time, so on this path requests do not share decode steps (a request's list of
``inputs`` still runs as one batch); the local front (``loraops-serve``) batches across requests.
Should DJL hand several items anyway, all of them run, each item gets its own body, and the call's status is
the worst of theirs (an error is never reported as 200); the log says to set ``batch_size=1``.

``"stream": true`` is refused (400): DJL streams only through its rolling-batch/async modes, which this entry
does not implement; the local front (``loraops-serve``) streams. The adapter may come in the body (``adapter``
or LMI's ``adapters``) or the SageMaker adapter header, which DJL passes as the item's properties (the header
itself, or ``adapter``, as LMI reads it).

The engine is built on the first call (DJL's warm-up), from ``/opt/ml/model``, the adapters under it and the
additional model data sources. Module state is DJL's contract: one engine per worker process.
"""

from __future__ import annotations

import logging
from pathlib import Path

from djl_python import Input, Output

from loraops_serving.engine import Engine
from loraops_serving.schema import ADAPTER_HEADER
from loraops_serving.service import Reply, Service, error, outcome_reply, rows_of
from loraops_serving.settings import ServingSettings

log = logging.getLogger("loraops_serving")
service: Service | None = None


def _start(properties: dict[str, str]) -> Service:
    model_dir = Path(properties.get("model_dir", "/opt/ml/model"))
    return Service(Engine(model_dir, ServingSettings.from_environment()))


def _headers(item: Input) -> dict[str, str]:
    headers = {k.lower(): v for k, v in item.get_properties().items()}
    if "adapter" in headers and ADAPTER_HEADER not in headers:  # where LMI looks for the header's value
        headers[ADAPTER_HEADER] = headers["adapter"]
    return headers


def handle(inputs: Input) -> Output | None:
    global service
    if service is None:
        service = _start(inputs.get_properties())
    if inputs.is_empty():  # DJL's warm-up call
        return None
    batch = inputs.get_batches()
    if len(batch) > 1:
        log.warning("DJL handed %d requests in one call: set batch_size=1 so each gets its own status", len(batch))
    tickets, replies = [], []
    for item in batch:
        parsed = service.parse(item.get_as_bytes() or b"", _headers(item))
        if not isinstance(parsed, Reply) and parsed.stream:
            parsed = error(400, "stream is not served through DJL's Python engine here; send stream=false")
        if isinstance(parsed, Reply):
            tickets.append((None, parsed))
        else:  # submitted together: several items share decode steps
            tickets.append((parsed, service.engine.scheduler.submit(rows_of(parsed))))
    for parsed, ticket in tickets:
        replies.append(ticket if parsed is None else outcome_reply(parsed, ticket.wait(600)))
    outputs = Output()
    for i, reply in enumerate(replies):
        outputs.add_as_json(reply.body, key=inputs.get_content().key_at(i) if len(batch) > 1 else None)
    outputs.set_code(max(reply.status for reply in replies))
    if outputs.code != 200:
        outputs.set_message(replies[0].body["error"] if len(replies) == 1 else "some requests failed")
    return outputs
