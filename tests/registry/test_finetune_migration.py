"""Earlier registrations are migrated: deploy refuses a fine-tune an earlier loraops registered until it is migrated,
a base without a content digest gets it recorded (keeping its approval), and a base changed since its import is not
migrated. Against moto's server over HTTP."""

from __future__ import annotations

import json

import pytest

from loraops import s3_layout
from loraops.manifest import content_digest
from loraops.packages import APPROVED, RegistryError
from tests.registry.conftest import ADAPTER_GROUP, BUCKET, REGION
from tests.registry.finetune_helpers import JOB, _approved_base, _flip_last_byte, _job, _manifest, _versions


def _legacy_finetune(registry, aws, adapter_output, base, with_digest: bool):
    """A package as an earlier loraops registered it: pointing at the job's output (with or without its digest)."""
    job_prefix = _job(aws, adapter_output)
    metadata = {
        "baseModelPackageArn": base.arn,
        "trainingJob": JOB,
        "outputMode": "adapter",
        "baseWeightsDigest": base.metadata["weightsDigest"],
    }
    if with_digest:
        metadata["contentDigest"] = content_digest(_manifest(adapter_output)["files"])
    tags = registry._group_tags(ADAPTER_GROUP)
    created = registry._create(ADAPTER_GROUP, tags, job_prefix, metadata, "legacy")
    return registry.decide(created.arn, approve=True)


@pytest.mark.parametrize("with_digest", [False, True], ids=["no-content-digest", "job-output-prefix"])
def test_an_earlier_fine_tune_is_refused_by_deploy_until_migrated(
    registry, aws, emulator, tiny_base, adapter_output, capsys, with_digest
):
    from loraops.cli import main
    from loraops.deployment import Deployer, DeploymentError
    from loraops.endpoints import ServingTarget

    base = _approved_base(registry, tiny_base)
    legacy = _legacy_finetune(registry, aws, adapter_output, base, with_digest)
    deployer = Deployer(registry, None, ServingTarget("loraops-test", "inference-components", "loraops-test-endpoint"))
    with pytest.raises(DeploymentError, match=f"run: loraops models migrate {legacy.arn}$"):
        deployer.apply(legacy.arn)

    options = ["--bucket", BUCKET, "--region", REGION, "--endpoint-url", emulator, "--json"]
    assert main(["models", "migrate", legacy.arn, *options]) == 0
    (result,) = json.loads(capsys.readouterr().out)["packages"]
    assert result["action"] == "copied" and result["package"] == legacy.arn
    migrated = registry.describe(result["migrated_to"])
    assert migrated.model_data_prefix.startswith(s3_layout.FINETUNED) and migrated.status != APPROVED  # approve anew
    assert migrated.metadata["baseModelPackageArn"] == base.arn
    registry.verify_content(migrated)
    assert main(["models", "migrate", *options]) == 0  # the whole environment: the legacy one again, same result
    results = json.loads(capsys.readouterr().out)["packages"]
    assert [r["migrated_to"] for r in results] == [migrated.arn] and len(_versions(aws)) == 2


def test_a_base_without_a_content_digest_gets_it_recorded_and_keeps_its_approval(registry, aws, tiny_base):
    base = _approved_base(registry, tiny_base)
    legacy_metadata = {k: v for k, v in base.metadata.items() if k != "contentDigest"}
    aws["sagemaker"].update_model_package(
        ModelPackageArn=base.arn, ModelApprovalStatus=APPROVED, CustomerMetadataProperties=legacy_metadata
    )
    legacy = registry.describe(base.arn)
    with pytest.raises(RegistryError, match=f"records no content digest .*run: loraops models migrate {base.arn}"):
        registry.verify_content(legacy)

    result = registry.migrate(base.arn)

    assert result["action"] == "recorded" and result["content_digest"] == base.metadata["contentDigest"]
    migrated = registry.describe(base.arn)
    assert migrated.status == APPROVED and migrated.metadata["contentDigest"] == base.metadata["contentDigest"]
    registry.verify_content(migrated)
    assert registry.migrate(base.arn)["action"] == "none"


def test_a_base_changed_since_its_import_is_not_migrated(registry, aws, tiny_base):
    base = _approved_base(registry, tiny_base)
    aws["sagemaker"].update_model_package(
        ModelPackageArn=base.arn,
        ModelApprovalStatus=APPROVED,
        CustomerMetadataProperties={k: v for k, v in base.metadata.items() if k != "contentDigest"},
    )
    _flip_last_byte(aws, base.model_data_prefix + "config.json")  # an earlier loraops let this happen in place
    with pytest.raises(RegistryError, match="config.json is not the file its import recorded"):
        registry.migrate(base.arn)
    assert "contentDigest" not in registry.describe(base.arn).metadata
