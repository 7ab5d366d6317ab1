"""Adapters the engine cannot serve exactly are refused at start-up with the reason, and the others serve:
every PEFT feature beyond plain LoRA on linear layers, an adapter without a manifest naming its base (unless
configured otherwise), and an unreadable one. Built with peft on the tiny base, as a user would train them."""

from __future__ import annotations

import json
import shutil

import pytest

from loraops.manifest import MANIFEST_FILE, Manifest
from loraops_serving.engine import Engine, Row
from loraops_serving.schema import UnknownAdapter
from loraops_serving.settings import ServingSettings
from tests.serving.conftest import _adapter

LINEAR = ["q_proj", "v_proj"]
UNSERVED = {  # adapter name -> (LoraConfig arguments, what the refusal must say)
    "dora": (dict(r=4, target_modules=LINEAR, use_dora=True), "DoRA"),
    "ranks": (dict(r=4, target_modules=LINEAR, rank_pattern={"q_proj": 2}), "rank_pattern"),
    "alphas": (dict(r=4, target_modules=LINEAR, alpha_pattern={"v_proj": 32}), "alpha_pattern"),
    "saved": (dict(r=4, target_modules=LINEAR, modules_to_save=["lm_head"]), "modules_to_save"),
    "embedding": (dict(r=4, target_modules=["embed_tokens", "q_proj"]), "other than LoRA A/B pairs"),
    "biased": (dict(r=4, target_modules=LINEAR, lora_bias=True), "lora_bias"),
}


@pytest.fixture(scope="module")
def zoo(tiny_base, adapters, tmp_path_factory) -> dict[str, object]:
    root = tmp_path_factory.mktemp("zoo")
    folders = {name: _adapter(tiny_base, root / name, 3, **lora) for name, (lora, _) in UNSERVED.items()}
    unverified = root / "unverified"
    shutil.copytree(adapters["alpha"], unverified)
    (unverified / MANIFEST_FILE).unlink()
    broken = root / "broken"
    shutil.copytree(adapters["alpha"], broken)
    (broken / "adapter_config.json").write_text("{not json")
    # only the one field a server compares, the right digest: not a manifest the trainer writes
    foreign = root / "foreign"
    shutil.copytree(adapters["alpha"], foreign)
    digest = Manifest.read(foreign).base_weights_digest
    (foreign / MANIFEST_FILE).write_text(json.dumps({"base_weights_digest": digest}))
    return {**folders, "unverified": unverified, "broken": broken, "foreign": foreign, "beta": adapters["beta"]}


def test_every_unserved_peft_feature_is_refused_with_its_reason_and_the_others_serve(tiny_base, zoo):
    engine = Engine(tiny_base, ServingSettings(), list(zoo.values()))
    assert list(engine.available) == ["beta"]
    for name, (_, reason) in UNSERVED.items():
        assert reason in engine.refused[name], (name, engine.refused[name])
    assert f"no {MANIFEST_FILE} naming its base weights" in engine.refused["unverified"]
    assert "broken" in engine.refused
    assert "schema_version None, expected 2" in engine.refused["foreign"], engine.refused["foreign"]
    assert engine.generate([Row("Hello", "beta", 3)])[0].tokens == 3
    with pytest.raises(UnknownAdapter, match=r"no adapter 'dora' \(refused at load: adapter dora uses DoRA"):
        engine.generate([Row("Hello", "dora", 3)])


def test_an_adapter_without_a_manifest_serves_only_when_allowed(tiny_base, zoo, engine):
    allowed = Engine(tiny_base, ServingSettings(allow_unverified_adapters=True), [zoo["unverified"]])
    assert list(allowed.available) == ["unverified"]
    served = allowed.generate([Row("Hello there", "unverified", 6)])[0].text
    assert served == engine.generate([Row("Hello there", "alpha", 6)])[0].text  # the same weights as alpha
    config = json.loads((zoo["unverified"] / "adapter_config.json").read_text())
    assert config["peft_type"] == "LORA"


def test_the_environment_switch_is_a_real_boolean():
    assert (
        ServingSettings.from_environment({"LORAOPS_ALLOW_UNVERIFIED_ADAPTERS": "false"}).allow_unverified_adapters
        is False
    )
    assert ServingSettings.from_environment({"LORAOPS_ALLOW_UNVERIFIED_ADAPTERS": "true"}).allow_unverified_adapters
    with pytest.raises(ValueError, match="LORAOPS_ALLOW_UNVERIFIED_ADAPTERS='maybe' is not a bool"):
        ServingSettings.from_environment({"LORAOPS_ALLOW_UNVERIFIED_ADAPTERS": "maybe"})
