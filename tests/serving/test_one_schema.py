"""One request schema across engines: a body written for LMI (``adapters``, or SageMaker's adapter header)
selects the same adapter per input on loraops as LMI does, a loraops body (``adapter``) likewise, and names that
disagree are refused instead of one silently winning.

The LMI side is its documented contract, written out here as :func:`lmi_adapters` (as read in
deepjavalibrary/djl-serving ``engines/python/setup/djl_python/input_parser.py``, ``_fetch_adapters_from_input``
and ``parse_adapters``: the body's ``adapters``, overridden by the item's ``adapter`` property that carries the
header; one name becomes a list; ``""`` is the base model; one per input or the request fails). LMI itself
(vLLM on a GPU) cannot run here."""

from __future__ import annotations

import json

import pytest

from loraops_serving.schema import BadRequest, parse
from loraops_serving.settings import ServingSettings

HEADER = "X-Amzn-SageMaker-Adapter-Identifier"


def lmi_adapters(body: dict, headers: dict[str, str]) -> list[str | None]:
    inputs = body["inputs"] if isinstance(body["inputs"], list) else [body["inputs"]]
    chosen = body.get("adapters", [])
    if HEADER in headers:  # DJL passes the header to LMI as the item's "adapter" property
        chosen = headers[HEADER]
    chosen = chosen if isinstance(chosen, list) else [chosen]
    if not chosen:
        chosen = [""] * len(inputs)
    if len(chosen) != len(inputs):
        raise ValueError("Number of adapters is not equal to the number of inputs")
    return [name or None for name in chosen]


def loraops_adapters(body: dict, headers: dict[str, str]) -> list[str | None]:
    return list(
        parse(json.dumps(body).encode(), {k.lower(): v for k, v in headers.items()}, ServingSettings()).adapters
    )


@pytest.mark.parametrize(
    ("body", "headers"),
    [
        ({"inputs": "Hi", "adapters": "beta"}, {}),
        ({"inputs": ["Hi", "Yo"], "adapters": ["alpha", "beta"]}, {}),
        ({"inputs": ["Hi", "Yo"], "adapters": ["", "beta"]}, {}),
        ({"inputs": "Hi"}, {HEADER: "alpha"}),
        ({"inputs": "Hi", "adapters": "beta"}, {HEADER: "beta"}),
        ({"inputs": "Hi"}, {}),
    ],
)
def test_a_body_written_for_lmi_selects_the_same_adapters_on_loraops(body, headers):
    assert loraops_adapters(body, headers) == lmi_adapters(body, headers)


def test_a_header_for_several_inputs_which_lmi_refuses_applies_to_each_on_loraops():
    body, headers = {"inputs": ["Hi", "Yo"]}, {HEADER: "alpha"}
    with pytest.raises(ValueError, match="Number of adapters"):
        lmi_adapters(body, headers)
    assert loraops_adapters(body, headers) == ["alpha", "alpha"]


def test_the_loraops_field_selects_what_lmi_selects_for_the_same_choice():
    assert loraops_adapters({"inputs": ["a", "b"], "adapter": "beta"}, {}) == lmi_adapters(
        {"inputs": ["a", "b"], "adapters": ["beta", "beta"]}, {}
    )


@pytest.mark.parametrize(
    ("body", "headers", "message"),
    [
        ({"inputs": ["a", "b"], "adapters": ["beta"]}, {}, "names 1 adapters for 2 inputs"),
        ({"inputs": "a", "adapter": "alpha", "adapters": "beta"}, {}, "adapter and adapters name different"),
        (
            {"inputs": "a", "adapters": "beta"},
            {HEADER: "alpha"},
            "adapters and the X-Amzn-SageMaker-Adapter-Identifier",
        ),
        ({"inputs": "a", "adapters": [1]}, {}, "adapters must be a string or a list of strings"),
    ],
)
def test_disagreeing_or_malformed_adapter_names_are_refused(body, headers, message):
    with pytest.raises(BadRequest, match=message):
        loraops_adapters(body, headers)
