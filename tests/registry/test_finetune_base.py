"""A fine-tune's base is the version its manifest names, not any version with its weights: two versions with the
same weights are ambiguous without a name, and a named base of other weights is refused. Against moto's server
over HTTP."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from loraops.manifest import MANIFEST_FILE, folder_weights_digest
from loraops.packages import RegistryError
from tests.registry.conftest import ADAPTER_GROUP
from tests.registry.finetune_helpers import JOB, _approved_base, _job, _manifest, _versions

BASE_GROUP = "meta-llama--Llama-2-7b-hf"


def _second_base_with_the_same_weights(registry, tiny_base: Path, tmp_path: Path):
    other = tmp_path / "base-v2"
    shutil.copytree(tiny_base, other)
    config = json.loads((other / "config.json").read_text())
    config["max_position_embeddings"] = 4096
    (other / "config.json").write_text(json.dumps(config))
    assert folder_weights_digest(other) == folder_weights_digest(tiny_base)
    return _approved_base(registry, other)


def test_a_fine_tunes_base_is_the_version_its_manifest_names_not_any_with_its_weights(
    registry, aws, tiny_base, adapter_output, tmp_path
):
    first = _approved_base(registry, tiny_base)
    second = _second_base_with_the_same_weights(registry, tiny_base, tmp_path)
    assert first.metadata["weightsDigest"] == second.metadata["weightsDigest"]
    assert first.metadata["contentDigest"] != second.metadata["contentDigest"]
    named = tmp_path / "named"
    shutil.copytree(adapter_output, named)
    manifest = _manifest(named)
    manifest["base_model_package_arn"] = second.arn  # what the workflow passes the trainer
    (named / MANIFEST_FILE).write_text(json.dumps(manifest))

    package = registry.register_finetune(ADAPTER_GROUP, _job(aws, named), JOB)

    assert package.metadata["baseModelPackageArn"] == second.arn
    assert package.metadata["baseContentDigest"] == second.metadata["contentDigest"]


def test_without_a_named_base_two_versions_with_the_same_weights_are_refused_as_ambiguous(
    registry, aws, tiny_base, adapter_output, tmp_path
):
    first = _approved_base(registry, tiny_base)
    second = _second_base_with_the_same_weights(registry, tiny_base, tmp_path)
    assert _manifest(adapter_output).get("base_model_package_arn") is None
    with pytest.raises(RegistryError, match=f"2 approved versions of {BASE_GROUP} share weights .*{second.arn}"):
        registry.register_finetune(ADAPTER_GROUP, _job(aws, adapter_output), JOB)
    assert first.arn != second.arn and _versions(aws) == []


def test_a_named_base_of_other_weights_is_refused(registry, aws, tiny_base, adapter_output, tmp_path):
    base = _approved_base(registry, tiny_base)
    wrong = tmp_path / "wrong"
    shutil.copytree(adapter_output, wrong)
    manifest = _manifest(wrong)
    manifest["base_model_package_arn"], manifest["base_weights_digest"] = base.arn, "sha256:" + "0" * 64
    (wrong / MANIFEST_FILE).write_text(json.dumps(manifest))
    with pytest.raises(RegistryError, match=f"the manifest's base package {base.arn} is {BASE_GROUP} with weights"):
        registry.register_finetune(ADAPTER_GROUP, _job(aws, wrong), JOB)
    assert _versions(aws) == []
