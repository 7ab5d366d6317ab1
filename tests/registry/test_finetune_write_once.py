"""Registered fine-tunes are content-addressed and written once (issue #20): what a package serves does not change
when the job's output is overwritten, the same bytes give the same package, and bytes that differ from their manifest
register nothing.

Against moto's server over HTTP. The emulator does not enforce bucket policies (the write-once policy is asserted on
the synthesized template, tests/infra/test_hardening.py): here the job's role overwriting its output is a plain
``PutObject``, which is exactly what the policy still allows under ``adapters/``.
"""

from __future__ import annotations

import hashlib
import json
import shutil

import pytest

from loraops import s3_layout
from loraops.manifest import MANIFEST_FILE, content_digest
from loraops.packages import RegistryError
from tests.registry.conftest import ADAPTER_GROUP, BUCKET, REGION
from tests.registry.finetune_helpers import (
    JOB,
    _approved_base,
    _flip_last_byte,
    _job,
    _keys,
    _manifest,
    _read,
    _versions,
)


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
