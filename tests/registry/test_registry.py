"""Registration with lineage, idempotency and refusal, against moto's server over HTTP."""

from __future__ import annotations

import json
import shutil

import pytest

from loraops import s3_layout
from loraops.base_import import import_base, upload_base
from loraops.base_sources import LocalFolder
from loraops.manifest import BASE_MANIFEST, MANIFEST_FILE, content_digest, folder_content_digest, folder_weights_digest
from loraops.naming import OutputMode
from loraops.packages import APPROVED, PENDING, RegistryError
from tests.registry.conftest import ADAPTER_GROUP, BUCKET, MERGED_GROUP, MODEL_ID, upload_folder

JOB = "loraops-dolly-adapter-1"


def _versions(aws, group: str) -> list[dict]:
    return aws["sagemaker"].list_model_packages(ModelPackageGroupName=group)["ModelPackageSummaryList"]


def test_import_base_uploads_uncompressed_and_registers_once(registry, aws, tiny_base):
    package = import_base(registry, LocalFolder(tiny_base), MODEL_ID, licence="llama2")
    digest = folder_content_digest(tiny_base)
    prefix = s3_layout.base_model_prefix("meta-llama--Llama-2-7b-hf", digest)
    keys = {o["Key"] for o in aws["s3"].list_objects_v2(Bucket=BUCKET, Prefix=prefix)["Contents"]}
    assert prefix + "model.safetensors" in keys and prefix + "config.json" in keys and prefix + BASE_MANIFEST in keys
    assert package.status == PENDING and package.metadata["contentDigest"] == digest
    assert package.metadata["weightsDigest"] == folder_weights_digest(tiny_base)
    assert package.metadata["licence"] == "llama2" and package.model_data_prefix == prefix
    described = aws["sagemaker"].describe_model_package(ModelPackageName=package.arn)
    source = described["InferenceSpecification"]["Containers"][0]["ModelDataSource"]["S3DataSource"]
    assert source == {"S3Uri": f"s3://{BUCKET}/{prefix}", "S3DataType": "S3Prefix", "CompressionType": "None"}
    assert described["InferenceSpecification"]["Containers"][0]["Image"].endswith(
        "djl-inference:0.38.0-lmi29.0.0-cu130"
    )
    again = import_base(registry, LocalFolder(tiny_base), MODEL_ID)
    assert again.arn == package.arn and len(_versions(aws, "meta-llama--Llama-2-7b-hf")) == 1


def test_base_whose_files_do_not_match_its_manifest_is_refused(registry, aws, tiny_base):
    digest = upload_base(registry, LocalFolder(tiny_base), MODEL_ID)
    prefix = s3_layout.base_model_prefix("meta-llama--Llama-2-7b-hf", digest)
    aws["s3"].put_object(Bucket=BUCKET, Key=prefix + "model.safetensors", Body=b"truncated")
    with pytest.raises(RegistryError, match=r"files missing or of another size: \['model.safetensors'\]"):
        registry.register_base(MODEL_ID, digest)
    other = "sha256:" + "0" * 64
    aws["s3"].copy_object(
        Bucket=BUCKET,
        CopySource={"Bucket": BUCKET, "Key": prefix + BASE_MANIFEST},
        Key=s3_layout.base_model_prefix("meta-llama--Llama-2-7b-hf", other) + BASE_MANIFEST,
    )
    with pytest.raises(RegistryError, match=f"describes {MODEL_ID} {digest}, not {MODEL_ID} {other}"):
        registry.register_base(MODEL_ID, other)
    with pytest.raises(RegistryError, match="no base manifest at"):
        registry.register_base(MODEL_ID, "sha256:" + "1" * 64)
    assert _versions(aws, "meta-llama--Llama-2-7b-hf") == []


def _approved_base(registry, tiny_base) -> str:
    base = import_base(registry, LocalFolder(tiny_base), MODEL_ID)
    return registry.decide(base.arn, approve=True, reason="evaluated").arn


def test_finetune_is_registered_with_its_lineage(registry, aws, tiny_base, adapter_output):
    base_arn = _approved_base(registry, tiny_base)
    prefix = s3_layout.model_prefix(OutputMode.ADAPTER, ADAPTER_GROUP, JOB)
    upload_folder(aws, adapter_output, prefix)
    package = registry.register_finetune(ADAPTER_GROUP, prefix, JOB)
    manifest = json.loads((adapter_output / MANIFEST_FILE).read_text())
    version = s3_layout.finetuned_prefix(ADAPTER_GROUP, content_digest(manifest["files"]))
    assert package.status == PENDING and package.model_data_prefix == version  # the write-once copy, not the job's
    assert package.metadata["baseModelPackageArn"] == base_arn
    assert package.metadata["baseWeightsDigest"] == manifest["base_weights_digest"] == folder_weights_digest(tiny_base)
    assert package.metadata["datasetDigest"] == manifest["dataset_digest"]
    assert package.metadata["trainingJob"] == JOB and package.metadata["outputMode"] == "adapter"
    assert (
        package.metadata["hp.lora_r"] == "8"
        and package.metadata["manifest"] == f"s3://{BUCKET}/{version}{MANIFEST_FILE}"
    )
    assert float(package.metadata["evalLoss"]) == pytest.approx(manifest["metrics"]["validation_loss"])
    described = aws["sagemaker"].describe_model_package(ModelPackageName=package.arn)
    assert described["ModelMetrics"]["ModelQuality"]["Statistics"]["S3Uri"] == f"s3://{BUCKET}/{version}evaluation.json"
    again = registry.register_finetune(ADAPTER_GROUP, prefix, JOB)  # the same event delivered twice
    assert again.arn == package.arn and len(_versions(aws, ADAPTER_GROUP)) == 1


def test_finetune_of_an_unapproved_base_is_refused(registry, aws, tiny_base, adapter_output):
    import_base(registry, LocalFolder(tiny_base), MODEL_ID)  # registered, still pending
    prefix = s3_layout.model_prefix(OutputMode.ADAPTER, ADAPTER_GROUP, JOB)
    upload_folder(aws, adapter_output, prefix)
    with pytest.raises(RegistryError, match="match no approved base package; register and approve the base first"):
        registry.register_finetune(ADAPTER_GROUP, prefix, JOB)
    assert _versions(aws, ADAPTER_GROUP) == []


def _edit_manifest(folder, **changes) -> None:
    """Change fields of the manifest in ``folder`` (None: remove the field)."""
    manifest = json.loads((folder / MANIFEST_FILE).read_text())
    manifest.update(changes)
    (folder / MANIFEST_FILE).write_text(json.dumps({k: v for k, v in manifest.items() if v is not None}))


@pytest.mark.parametrize(
    ("damage", "message"),
    [
        (lambda p: p.joinpath(MANIFEST_FILE).unlink(), "no training manifest at"),
        (lambda p: p.joinpath(MANIFEST_FILE).write_text("{not json"), "training manifest is not valid JSON"),
        (lambda p: p.joinpath("evaluation.json").write_text('{"loss": NaN}'), "evaluation report is not valid JSON"),
        (lambda p: _edit_manifest(p, schema_version=1), "training manifest: schema_version 1, expected 2"),
        (lambda p: _edit_manifest(p, data=None), "training manifest: no 'data'"),
        (
            lambda p: p.joinpath("adapter_model.safetensors").unlink(),
            r"files the manifest lists are missing: \['adapter_model.safetensors'\]",
        ),
        (
            lambda p: p.joinpath("adapter_model.safetensors").write_bytes(
                p.joinpath("adapter_model.safetensors").read_bytes()[:-64]
            ),
            r"adapter_model.safetensors: the header describes \d+ bytes, the file has \d+",
        ),
    ],
)
def test_a_missing_or_corrupt_output_registers_nothing(
    registry, aws, tiny_base, adapter_output, tmp_path, damage, message
):
    _approved_base(registry, tiny_base)
    broken = tmp_path / "model"
    shutil.copytree(adapter_output, broken)
    damage(broken)
    prefix = s3_layout.model_prefix(OutputMode.ADAPTER, ADAPTER_GROUP, JOB)
    upload_folder(aws, broken, prefix)
    with pytest.raises(RegistryError, match=message):
        registry.register_finetune(ADAPTER_GROUP, prefix, JOB)
    assert _versions(aws, ADAPTER_GROUP) == []


def test_a_finetune_of_another_base_is_refused_by_this_bases_group(registry, aws, tiny_base, adapter_output, tmp_path):
    _approved_base(registry, tiny_base)
    other = tmp_path / "model"
    shutil.copytree(adapter_output, other)
    manifest = json.loads((other / MANIFEST_FILE).read_text())
    manifest["base_model_id"] = "other-org/other-model"
    (other / MANIFEST_FILE).write_text(json.dumps(manifest))
    prefix = s3_layout.model_prefix(OutputMode.ADAPTER, ADAPTER_GROUP, JOB)
    upload_folder(aws, other, prefix)
    with pytest.raises(RegistryError, match="the job's manifest names base other-org/other-model"):
        registry.register_finetune(ADAPTER_GROUP, prefix, JOB)
    assert _versions(aws, ADAPTER_GROUP) == []


def test_an_adapter_is_refused_by_a_merged_group(registry, aws, tiny_base, adapter_output):
    _approved_base(registry, tiny_base)
    prefix = s3_layout.model_prefix(OutputMode.MERGED, MERGED_GROUP, JOB)
    upload_folder(aws, adapter_output, prefix)
    with pytest.raises(RegistryError, match=f"group {MERGED_GROUP} holds merged models, the job wrote adapter"):
        registry.register_finetune(MERGED_GROUP, prefix, JOB)


def adapter_version_key(aws, name: str) -> str:
    (key,) = [
        o["Key"]
        for o in aws["s3"].list_objects_v2(Bucket=BUCKET, Prefix=s3_layout.FINETUNED)["Contents"]
        if o["Key"].endswith("/" + name)
    ]
    return key


def test_tree_and_storage_report(registry, aws, tiny_base, adapter_output):
    _approved_base(registry, tiny_base)
    prefix = s3_layout.model_prefix(OutputMode.ADAPTER, ADAPTER_GROUP, JOB)
    upload_folder(aws, adapter_output, prefix)
    registry.register_finetune(ADAPTER_GROUP, prefix, JOB)
    (base,) = registry.tree()
    assert base["base"] == "meta-llama--Llama-2-7b-hf"
    assert base["collections"] == [
        "meta-llama--Llama-2-7b-hf",
        "meta-llama--Llama-2-7b-hf/meta-llama--Llama-2-7b-hf-adapters",
        "meta-llama--Llama-2-7b-hf/meta-llama--Llama-2-7b-hf-merged",
    ]
    groups = {g["group"]: g for g in base["groups"]}
    assert groups["meta-llama--Llama-2-7b-hf"]["versions"][0]["status"] == APPROVED
    (adapter,) = groups[ADAPTER_GROUP]["versions"]
    assert adapter["status"] == PENDING and adapter["dataset"] == "databricks-dolly-15k"
    archive = aws["s3"].head_object(Bucket=BUCKET, Key=adapter_version_key(aws, s3_layout.ADAPTER_ARCHIVE))
    # every byte the version holds: its files and the archive packed from them for inference components
    files = sum(p.stat().st_size for p in adapter_output.rglob("*") if p.is_file())
    assert adapter["bytes"] == files + archive["ContentLength"]
    (report,) = registry.storage_report()["bases"]
    base_bytes = sum(p.stat().st_size for p in tiny_base.iterdir() if p.is_file())
    assert report["base_bytes"] >= base_bytes and report["adapter_variants"] == 1
    # no merged variant measured: a merged copy of the adapter would be the base's size
    assert report["adapters_if_merged_bytes"] == report["base_bytes"]
    assert report["saved_by_separate_adapters_bytes"] == report["base_bytes"] - report["adapter_bytes"]
