"""Registered fine-tunes are content-addressed and written once (issue #20), an adapter is packed as the one
``.tar.gz`` an inference component names (issue #21), earlier registrations are migrated, and a fine-tune's base is
the version it names, not any version with its weights.

Against moto's server over HTTP. The emulator does not enforce bucket policies (the write-once policy is asserted on
the synthesized template, tests/infra/test_hardening.py): here the job's role overwriting its output is a plain
``PutObject``, which is exactly what the policy still allows under ``adapters/``.
"""

from __future__ import annotations

import base64
import hashlib
import io
import json
import shutil
import tarfile
from pathlib import Path

import pytest

from loraops import artifacts, s3_layout
from loraops.adapter_archive import adapter_archive
from loraops.artifacts import ArtifactError, copy_once, stored_digest
from loraops.base_import import import_base
from loraops.base_sources import LocalFolder
from loraops.manifest import MANIFEST_FILE, content_digest, folder_weights_digest
from loraops.naming import TAG_OUTPUT_MODE, OutputMode
from loraops.packages import APPROVED, RegistryError
from tests.registry.conftest import ADAPTER_GROUP, BUCKET, MERGED_GROUP, MODEL_ID, REGION, upload_folder
from tests.registry.stand_ins import CallRecorder

JOB = "loraops-adapter-1"
BASE_GROUP = "meta-llama--Llama-2-7b-hf"


def _job(aws, folder: Path, job: str = JOB, mode: OutputMode = OutputMode.ADAPTER, group: str = ADAPTER_GROUP) -> str:
    prefix = s3_layout.model_prefix(mode, group, job)
    upload_folder(aws, folder, prefix)
    return prefix


def _approved_base(registry, folder: Path):
    return registry.decide(import_base(registry, LocalFolder(folder), MODEL_ID).arn, approve=True)


def _manifest(folder: Path) -> dict:
    return json.loads((folder / MANIFEST_FILE).read_text())


def _read(aws, key: str) -> bytes:
    return aws["s3"].get_object(Bucket=BUCKET, Key=key)["Body"].read()


def _keys(aws, prefix: str) -> list[str]:
    pages = aws["s3"].get_paginator("list_objects_v2").paginate(Bucket=BUCKET, Prefix=prefix)
    return sorted(o["Key"] for page in pages for o in page.get("Contents", []))


def _versions(aws, group: str = ADAPTER_GROUP) -> list[dict]:
    return aws["sagemaker"].list_model_packages(ModelPackageGroupName=group)["ModelPackageSummaryList"]


def _flip_last_byte(aws, key: str) -> None:
    body = _read(aws, key)
    aws["s3"].put_object(Bucket=BUCKET, Key=key, Body=body[:-1] + bytes([body[-1] ^ 1]))  # same size, other bytes


# ------------------------------------------------------------------------------------ write-once fine-tunes
def test_overwriting_the_jobs_output_after_registration_does_not_change_what_the_package_serves(
    registry, aws, tiny_base, adapter_output
):
    _approved_base(registry, tiny_base)
    job_prefix = _job(aws, adapter_output)
    package = registry.decide(registry.register_finetune(ADAPTER_GROUP, job_prefix, JOB).arn, approve=True)
    files = _manifest(adapter_output)["files"]
    assert package.model_data_prefix == s3_layout.finetuned_prefix(ADAPTER_GROUP, content_digest(files))

    # the job's role (PutObject under adapters/) rewrites its output: other weights, another config, one more file
    _flip_last_byte(aws, job_prefix + "adapter_model.safetensors")
    aws["s3"].put_object(Bucket=BUCKET, Key=job_prefix + "adapter_config.json", Body=b'{"r": 1024}')
    aws["s3"].put_object(Bucket=BUCKET, Key=job_prefix + "extra.bin", Body=b"planted")

    registry.verify_content(package)  # what deploy-on-approval checks before it serves: still the registered bytes
    for name in files:
        assert _read(aws, package.model_data_prefix + name) == (adapter_output / name).read_bytes(), name
    assert _keys(aws, package.model_data_prefix) == sorted(
        package.model_data_prefix + n for n in [*files, MANIFEST_FILE, s3_layout.ADAPTER_ARCHIVE]
    )


def test_the_same_bytes_again_give_the_same_package_and_prefix_other_bytes_a_new_one(
    registry, aws, tiny_base, adapter_output, tmp_path
):
    _approved_base(registry, tiny_base)
    first = registry.register_finetune(ADAPTER_GROUP, _job(aws, adapter_output), JOB)
    before = {k: aws["s3"].head_object(Bucket=BUCKET, Key=k)["ETag"] for k in _keys(aws, first.model_data_prefix)}

    again = registry.register_finetune(ADAPTER_GROUP, _job(aws, adapter_output), JOB)  # the event delivered twice
    other_job = registry.register_finetune(ADAPTER_GROUP, _job(aws, adapter_output, "loraops-adapter-2"), "x-2")

    assert again.arn == other_job.arn == first.arn
    assert again.model_data_prefix == other_job.model_data_prefix == first.model_data_prefix
    assert len(_versions(aws)) == 1
    assert {k: aws["s3"].head_object(Bucket=BUCKET, Key=k)["ETag"] for k in _keys(aws, first.model_data_prefix)} == (
        before
    )  # nothing rewritten

    changed = tmp_path / "changed"
    shutil.copytree(adapter_output, changed)
    (changed / "NOTES.txt").write_text("another run\n")
    manifest = _manifest(changed)
    manifest["files"]["NOTES.txt"] = "sha256:" + hashlib.sha256(b"another run\n").hexdigest()
    (changed / MANIFEST_FILE).write_text(json.dumps(manifest))
    new = registry.register_finetune(ADAPTER_GROUP, _job(aws, changed, "loraops-adapter-3"), "loraops-adapter-3")
    assert new.arn != first.arn and new.model_data_prefix != first.model_data_prefix
    assert new.model_data_prefix == s3_layout.finetuned_prefix(ADAPTER_GROUP, content_digest(manifest["files"]))


def test_an_output_whose_bytes_differ_from_its_manifest_copies_and_registers_nothing(
    registry, aws, tiny_base, adapter_output
):
    _approved_base(registry, tiny_base)
    job_prefix = _job(aws, adapter_output)
    _flip_last_byte(aws, job_prefix + "adapter_config.json")  # the size still matches the manifest's file

    with pytest.raises(RegistryError, match=r"adapter_config.json holds sha256:[0-9a-f]{64}, not sha256:"):
        registry.register_finetune(ADAPTER_GROUP, job_prefix, JOB)

    assert _keys(aws, s3_layout.FINETUNED) == [] and _versions(aws) == []
    assert aws["s3"].list_multipart_uploads(Bucket=BUCKET).get("Uploads", []) == []  # every copy aborted


def test_the_manifest_copied_is_the_one_checked_even_when_the_job_rewrites_it_meanwhile(
    registry, aws, emulator, tiny_base, adapter_output
):
    import boto3

    _approved_base(registry, tiny_base)
    job_prefix = _job(aws, adapter_output)
    role = boto3.client("s3", endpoint_url=emulator, region_name=REGION)  # the job's role, another client

    def rewrite_once(params, context, **_):
        if params.get("Key") == job_prefix + MANIFEST_FILE and not context.get("rewritten"):
            context["rewritten"] = True  # the request goes out first; the rewrite lands right after it is answered

    def after(parsed, context, **_):
        if context.get("rewritten"):
            role.put_object(Bucket=BUCKET, Key=job_prefix + MANIFEST_FILE, Body=b'{"files": {"planted": "x"}}')

    registry.s3.meta.events.register("before-parameter-build.s3.GetObject", rewrite_once)
    registry.s3.meta.events.register("after-call.s3.GetObject", after)
    package = registry.register_finetune(ADAPTER_GROUP, job_prefix, JOB)

    assert b"planted" in _read(aws, job_prefix + MANIFEST_FILE)  # the rewrite did happen
    assert _read(aws, package.model_data_prefix + MANIFEST_FILE) == (adapter_output / MANIFEST_FILE).read_bytes()
    registry.verify_content(package)


def test_a_write_once_key_is_never_replaced_by_a_copy(aws):
    aws["s3"].create_bucket(Bucket=BUCKET)
    mine, other = b"registered bytes", b"other bytes"
    for key, body in (("adapters/g/j/a", mine), ("adapters/g/j/b", other)):
        aws["s3"].put_object(Bucket=BUCKET, Key=key, Body=body)
    digest = "sha256:" + hashlib.sha256(mine).hexdigest()

    assert copy_once(aws["s3"], BUCKET, "adapters/g/j/a", "finetuned/g/x/a", digest) is True
    assert copy_once(aws["s3"], BUCKET, "adapters/g/j/a", "finetuned/g/x/a", digest) is False  # already there
    with pytest.raises(ArtifactError, match="already holds other bytes"):
        copy_once(aws["s3"], BUCKET, "adapters/g/j/b", "finetuned/g/x/a", "sha256:" + hashlib.sha256(other).hexdigest())
    assert _read(aws, "finetuned/g/x/a") == mine
    assert stored_digest(aws["s3"], BUCKET, "finetuned/g/x/a") == digest


def test_a_copy_from_another_bucket_is_checked_and_written_once_too(aws):
    """What a promotion between environments' buckets uses: the same checked, conditional copy."""
    aws["s3"].create_bucket(Bucket=BUCKET)
    aws["s3"].create_bucket(Bucket="loraops-staging-artifacts")
    aws["s3"].put_object(Bucket="loraops-staging-artifacts", Key="finetuned/g/x/a", Body=b"approved in staging")
    digest = "sha256:" + hashlib.sha256(b"approved in staging").hexdigest()
    assert copy_once(aws["s3"], BUCKET, "finetuned/g/x/a", "finetuned/g/x/a", digest, "loraops-staging-artifacts")
    assert _read(aws, "finetuned/g/x/a") == b"approved in staging"
    with pytest.raises(ArtifactError, match="holds sha256:"):
        copy_once(
            aws["s3"], BUCKET, "finetuned/g/x/a", "finetuned/g/y/a", "sha256:" + "0" * 64, "loraops-staging-artifacts"
        )


def test_a_file_larger_than_one_copy_part_is_copied_in_parts(aws, monkeypatch):
    monkeypatch.setattr(artifacts, "COPY_PART_LIMIT", 5 * 1024 * 1024)
    monkeypatch.setattr(artifacts, "COPY_PART_SIZE", 5 * 1024 * 1024)  # S3's smallest part
    aws["s3"].create_bucket(Bucket=BUCKET)
    body = bytes(range(256)) * (11 * 4096)  # 11 MiB: three parts
    aws["s3"].put_object(Bucket=BUCKET, Key="merged/g/j/model.safetensors", Body=body)
    digest = "sha256:" + hashlib.sha256(body).hexdigest()
    recorder = CallRecorder(aws["s3"])

    assert copy_once(aws["s3"], BUCKET, "merged/g/j/model.safetensors", "finetuned/g/x/model.safetensors", digest)

    assert [op for op, _ in recorder.of("s3")].count("UploadPartCopy") == 3
    assert _read(aws, "finetuned/g/x/model.safetensors") == body
    assert stored_digest(aws["s3"], BUCKET, "finetuned/g/x/model.safetensors") == digest


def _report_part_checksum(aws, value: str | None = None) -> None:
    """S3 returns the SHA-256 of a copied part when the upload was created with that algorithm; moto 5.2.x leaves
    it out, so it is added to the parsed answer here (of the bytes actually copied, or ``value``)."""

    def remember(params, context, **_):
        source = params["CopySource"]  # botocore has already turned it into "bucket/key" (no version: unversioned)
        bucket, key = (source["Bucket"], source["Key"]) if isinstance(source, dict) else source.split("/", 1)
        body = aws["s3"].get_object(Bucket=bucket, Key=key.split("?")[0])["Body"].read()
        context["copied"] = base64.b64encode(hashlib.sha256(body).digest()).decode()

    def add(parsed, context, **_):
        parsed["CopyPartResult"]["ChecksumSHA256"] = value or context["copied"]

    aws["s3"].meta.events.register("before-parameter-build.s3.UploadPartCopy", remember)
    aws["s3"].meta.events.register("after-call.s3.UploadPartCopy", add)


def test_where_s3_reports_the_copied_parts_sha256_no_byte_is_read_here(aws):
    aws["s3"].create_bucket(Bucket=BUCKET)
    body = b"adapter weights" * 100
    aws["s3"].put_object(Bucket=BUCKET, Key="adapters/g/j/w", Body=body)
    _report_part_checksum(aws)
    recorder = CallRecorder(aws["s3"])

    copy_once(aws["s3"], BUCKET, "adapters/g/j/w", "finetuned/g/x/w", "sha256:" + hashlib.sha256(body).hexdigest())

    # the only GetObject is the stand-in's own (it computes what S3 would report); the copy read nothing itself
    assert [op for op, params in recorder.of("s3") if op == "GetObject" and "If-Match" in str(params)] == []
    assert [op for op, _ in recorder.of("s3")].count("UploadPartCopy") == 1
    assert _read(aws, "finetuned/g/x/w") == body


def test_where_s3_reports_another_sha256_the_copy_is_aborted(aws):
    aws["s3"].create_bucket(Bucket=BUCKET)
    aws["s3"].put_object(Bucket=BUCKET, Key="adapters/g/j/w", Body=b"bytes")
    _report_part_checksum(aws, base64.b64encode(b"\0" * 32).decode())
    with pytest.raises(ArtifactError, match=r"holds sha256:0{64}, not"):
        copy_once(
            aws["s3"], BUCKET, "adapters/g/j/w", "finetuned/g/x/w", "sha256:" + hashlib.sha256(b"bytes").hexdigest()
        )
    assert _keys(aws, s3_layout.FINETUNED) == []
    assert aws["s3"].list_multipart_uploads(Bucket=BUCKET).get("Uploads", []) == []


# ---------------------------------------------------------------------------------------- adapter archive
def test_the_adapter_archive_holds_exactly_the_adapters_files_and_no_byte_of_the_base(
    registry, aws, tiny_base, adapter_output
):
    base = _approved_base(registry, tiny_base)
    job_prefix = _job(aws, adapter_output)
    recorder = CallRecorder(aws["s3"])
    package = registry.register_finetune(ADAPTER_GROUP, job_prefix, JOB)

    key = package.model_data_prefix + s3_layout.ADAPTER_ARCHIVE
    data = _read(aws, key)
    assert package.metadata["adapterArchive"] == s3_layout.ADAPTER_ARCHIVE
    assert package.metadata["archiveDigest"] == "sha256:" + hashlib.sha256(data).hexdigest()
    with tarfile.open(fileobj=io.BytesIO(data), mode="r:gz") as tar:
        members = {m.name: tar.extractfile(m).read() for m in tar.getmembers()}
        assert all(m.isfile() and m.mtime == 0 and m.uid == 0 for m in tar.getmembers())
    files = _manifest(adapter_output)["files"]
    assert sorted(members) == sorted(files)
    assert all(members[name] == (adapter_output / name).read_bytes() for name in files)
    # zero bytes of the base: nothing under base/ is read or copied, and no base weight file is in the version
    touched = [params for op, params in recorder.of("s3") if op in ("GetObject", "UploadPartCopy", "CopyObject")]
    assert touched and not [p for p in touched if f"/{s3_layout.BASE}" in str(p)]
    assert base.model_data_prefix.startswith(s3_layout.BASE)
    assert "model.safetensors" not in members and len(data) < (tiny_base / "model.safetensors").stat().st_size


def test_the_same_files_pack_to_the_same_archive_bytes(adapter_output, monkeypatch):
    import time

    files = _manifest(adapter_output)["files"]
    openers = {n: (lambda p=adapter_output / n: open(p, "rb")) for n in files}  # noqa: SIM115
    sizes = {n: (adapter_output / n).stat().st_size for n in files}
    first, size, digest = adapter_archive(openers, sizes)
    later = time.time() + 86_400
    monkeypatch.setattr(time, "time", lambda: later)  # packed a day later, the files listed in another order
    second, _, again = adapter_archive(dict(reversed(list(openers.items()))), sizes)
    with first, second:
        assert digest == again and first.read() == second.read() and size > 0


def test_a_merged_model_has_no_archive(registry, aws, tiny_base, adapter_output, tmp_path):
    """Only adapters are named by an ArtifactUrl; a merged version is served from its uncompressed prefix."""
    _approved_base(registry, tiny_base)
    merged = tmp_path / "merged"
    shutil.copytree(adapter_output, merged)
    manifest = _manifest(merged)
    manifest["output_mode"] = OutputMode.MERGED.value
    (merged / MANIFEST_FILE).write_text(json.dumps(manifest))
    tags = aws["sagemaker"].list_tags(
        ResourceArn=aws["sagemaker"].describe_model_package_group(ModelPackageGroupName=MERGED_GROUP)[
            "ModelPackageGroupArn"
        ]
    )["Tags"]
    assert {t["Key"]: t["Value"] for t in tags}[TAG_OUTPUT_MODE] == "merged"
    package = registry.register_finetune(
        MERGED_GROUP, _job(aws, merged, mode=OutputMode.MERGED, group=MERGED_GROUP), JOB
    )
    assert "adapterArchive" not in package.metadata
    assert s3_layout.ADAPTER_ARCHIVE not in [k.rsplit("/", 1)[-1] for k in _keys(aws, package.model_data_prefix)]
    registry.verify_content(package)


# ---------------------------------------------------------------------------------------------- migration
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


# ------------------------------------------------------------------------------------- the fine-tune's base
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
