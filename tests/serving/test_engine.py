"""The engine on the tiny base: base + adapter equals the merged model, rows pick their adapters, a mixed batch
equals the same rows one by one, adapters of another base are refused, and the LRU bound holds."""

from __future__ import annotations

import json
import re
import shutil

import pytest
import torch

from loraops.manifest import MANIFEST_FILE
from loraops_serving.engine import Engine, Row
from loraops_serving.schema import Sampling, UnknownAdapter
from loraops_serving.settings import ServingSettings

PROMPTS = [
    "### Instruction:\nWhat is a llama?\n\n### Response:\n",
    "### Instruction:\nName three rivers in Europe.\n\n### Response:\n",
    "### Instruction:\nWhy is the sky blue?\n\n### Response:\n",
]
GREEDY = Sampling()


def _texts(engine: Engine, rows: list[Row]) -> list[str]:
    return [g.text for g in engine.generate(rows, GREEDY)]


def test_base_plus_adapter_equals_the_merged_model(engine, merged_alpha):
    merged = Engine(merged_alpha, ServingSettings())
    rows = [Row(p, "alpha", 12) for p in PROMPTS]
    assert _texts(engine, rows) == _texts(merged, [Row(p, None, 12) for p in PROMPTS])
    batch = engine.tokenizer(PROMPTS[:1], return_tensors="pt").to(engine.device)
    slot = engine.acquire("alpha")
    engine.routing.rows, engine.routing.active = torch.tensor([slot], device=engine.device), True
    try:
        with torch.no_grad():
            ours = engine.model(**batch).logits
    finally:
        engine.routing.rows, engine.routing.active = None, False
        engine.release("alpha")
    with torch.no_grad():
        theirs = merged.model(**batch).logits
    torch.testing.assert_close(ours, theirs, atol=1e-4, rtol=1e-4)


def test_each_row_gets_its_adapter_and_a_mixed_batch_equals_one_by_one(engine):
    alone = {name: _texts(engine, [Row(PROMPTS[0], name, 10)])[0] for name in ("alpha", "beta", None)}
    assert len(set(alone.values())) == 3, "the adapters must change the output for this test to mean anything"
    rows = [Row(PROMPTS[0], "beta", 10), Row(PROMPTS[0], None, 10), Row(PROMPTS[0], "alpha", 10)]
    rows += [Row(p, a, 8) for p in PROMPTS[1:] for a in ("alpha", None, "beta")]
    mixed = _texts(engine, rows)
    assert mixed[:3] == [alone["beta"], alone[None], alone["alpha"]]
    assert mixed == [_texts(engine, [row])[0] for row in rows]


def test_the_lru_bound_holds_and_evicted_adapters_come_back_right(tiny_base, adapters):
    engine = Engine(tiny_base, ServingSettings(max_resident_adapters=1), list(adapters.values()))
    first = {name: _texts(engine, [Row(PROMPTS[1], name, 8)])[0] for name in ("alpha", "beta")}
    for name in ("alpha", "beta", "alpha", "beta"):
        assert _texts(engine, [Row(PROMPTS[1], name, 8)])[0] == first[name]
        assert list(engine.resident) == [name]


def test_an_adapter_of_another_base_is_refused_naming_both_digests(tiny_base, adapters, tmp_path):
    stranger = tmp_path / "stranger"
    shutil.copytree(adapters["alpha"], stranger)
    manifest = json.loads((stranger / MANIFEST_FILE).read_text())
    manifest["base_weights_digest"] = "sha256:" + "f" * 64
    (stranger / MANIFEST_FILE).write_text(json.dumps(manifest))
    engine = Engine(tiny_base, ServingSettings(), [stranger, adapters["beta"]])
    assert list(engine.available) == ["beta"]  # reported and skipped; the others serve
    assert re.search(r"trained on base weights sha256:f{64}; the loaded base is sha256:", engine.refused["stranger"])
    with pytest.raises(UnknownAdapter, match=r"no adapter 'stranger' \(refused at load: adapter stranger was trained"):
        engine.generate([Row(PROMPTS[0], "stranger", 2)])


def test_stop_strings_and_lengths_are_per_row(engine):
    full = _texts(engine, [Row(PROMPTS[2], None, 16)])[0]
    stop = full[3:6]
    short, stopped = engine.generate([Row(PROMPTS[2], None, 5), Row(PROMPTS[2], None, 16, (stop,))], GREEDY)
    assert short.tokens == 5 and short.finish_reason in ("length", "eos")
    assert stopped.finish_reason == "stop" and stopped.text == full[: full.index(stop)]
