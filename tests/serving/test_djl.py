"""DJL's door (``serving_container/model.py``) driven the way DJL drives it, through a stand-in for
``djl_python``'s Input/Output (``djl_stand_in``; the real package is not installable here). What the client sees
is the call's status and body: each request's own status with ``batch_size=1``; an error is never hidden behind a
200 when DJL batches anyway; the adapter comes from the body, LMI's ``adapters`` or the header (as the header
itself or LMI's ``adapter`` property); ``stream`` is refused, not silently unstreamed."""

from __future__ import annotations

import importlib.util
import json
import sys

import pytest

from loraops_serving.engine import Row
from loraops_serving.service import Service
from tests.helpers import ROOT
from tests.serving import djl_stand_in as djl

PROMPT = "### Instruction:\nName a colour.\n\n### Response:\n"


@pytest.fixture(scope="module")
def door(engine):
    saved = sys.modules.get("djl_python")
    sys.modules["djl_python"] = djl.module()
    try:
        spec = importlib.util.spec_from_file_location("loraops_djl_model", ROOT / "serving_container" / "model.py")
        model = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(model)
    finally:
        if saved is None:
            sys.modules.pop("djl_python", None)
        else:
            sys.modules["djl_python"] = saved
    model.service = Service(engine)  # what the warm-up call builds from model_dir
    return model


def body(**fields) -> bytes:
    return json.dumps({"inputs": PROMPT, "parameters": {"max_new_tokens": 4}, **fields}).encode()


def test_each_request_gets_its_own_status(door, engine):
    expected = engine.generate([Row(PROMPT, "beta", 4)])[0].text
    [(status, answer)] = djl.client_sees(door.handle(djl.request(body(adapter="beta"))))
    assert status == 200 and answer["generated_text"] == expected
    assert djl.client_sees(door.handle(djl.request(b"{nope")))[0][0] == 400
    [(status, answer)] = djl.client_sees(door.handle(djl.request(body(adapter="gamma"))))
    assert status == 404 and "no adapter 'gamma'" in answer["error"]


@pytest.mark.parametrize(
    "request_for",
    [
        lambda: djl.request(body(adapters="beta")),
        lambda: djl.request(body(), {"X-Amzn-SageMaker-Adapter-Identifier": "beta"}),
        lambda: djl.request(body(), {"adapter": "beta"}),
    ],
    ids=["lmi-body-field", "sagemaker-header", "lmi-adapter-property"],
)
def test_the_adapter_is_found_wherever_lmi_would_find_it(door, engine, request_for):
    expected = engine.generate([Row(PROMPT, "beta", 4)])[0].text
    [(status, answer)] = djl.client_sees(door.handle(request_for()))
    assert status == 200 and answer["adapter"] == "beta" and answer["generated_text"] == expected


def test_stream_is_refused_on_djl_rather_than_answered_unstreamed(door):
    [(status, answer)] = djl.client_sees(door.handle(djl.request(body(stream=True))))
    assert status == 400 and "stream is not served through DJL" in answer["error"]


def test_a_failing_generation_answers_500_and_the_next_request_is_served(door, engine):
    def broken(seqs):
        raise RuntimeError("planted failure")

    engine.prefill = broken  # a forward that fails; everything else is real
    try:
        [(status, answer)] = djl.client_sees(door.handle(djl.request(body())))
    finally:
        del engine.prefill
    assert status == 500 and "generation failed" in answer["error"]
    assert djl.client_sees(door.handle(djl.request(body())))[0][0] == 200


def test_a_bad_request_in_a_djl_batch_is_never_reported_as_200(door):
    call = djl.batch([(body(), {}), (body(adapter="gamma"), {})])
    seen = djl.client_sees(door.handle(call))
    assert [status for status, _ in seen] == [404, 404]  # DJL gives both items the call's status
    assert "generated_text" in seen[0][1] and "no adapter 'gamma'" in seen[1][1]["error"]
