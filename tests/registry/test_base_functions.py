"""The register-base and import-base functions, called in-process with the events their callers send (moto cannot
invoke Lambda without Docker), against the emulator over HTTP."""

from __future__ import annotations

import threading

import boto3
import pytest

from loraops import s3_layout
from loraops.base_import import upload_base
from loraops.base_sources import LocalFolder
from loraops.manifest import folder_content_digest, folder_weights_digest
from tests.registry.conftest import MODEL_ID, LambdaContext, invoke_concurrently, load_handler

GROUP = "meta-llama--Llama-2-7b-hf"
SOURCE_BUCKET = "loraops-test-source"


def _packages(aws) -> list[dict]:
    return aws["sagemaker"].list_model_packages(ModelPackageGroupName=GROUP)["ModelPackageSummaryList"]


class LapsedContext(LambdaContext):
    """A Lambda context whose remaining time has run out: Powertools' "in progress" mark on the idempotency record
    expires at once, as it does on Lambda when a registration outlives the invocation's remaining time."""

    @staticmethod
    def get_remaining_time_in_millis() -> int:
        return -1


def test_register_base_registers_once_even_when_invoked_concurrently(registry, aws, function_environment, tiny_base):
    """The overlap Powertools cannot stop, forced with events: invocation A is stopped as it claims the
    registration (after its first lookup found nothing); B, whose idempotency check passes because A's in-progress
    mark has lapsed, registers in full; then A goes on. A registers nothing new: it returns B's version."""
    digest = upload_base(registry, LocalFolder(tiny_base), MODEL_ID)
    function = load_handler("register_base")
    event = {"model_id": MODEL_ID, "content_digest": digest}
    a_at_claim, b_done, results = threading.Event(), threading.Event(), {}

    def stop_a_at_its_claim(params, **_):
        if threading.current_thread().name == "A" and params.get("Key", "").startswith(s3_layout.REGISTRATIONS):
            a_at_claim.set()
            assert b_done.wait(timeout=120)

    session = boto3.DEFAULT_SESSION or boto3.setup_default_session() or boto3.DEFAULT_SESSION
    session.events.register("before-parameter-build.s3.PutObject", stop_a_at_its_claim)
    try:
        a = threading.Thread(
            name="A", target=lambda: results.__setitem__("a", function.handler(dict(event), LapsedContext()))
        )
        a.start()
        assert a_at_claim.wait(timeout=120)
        results["b"] = function.handler(dict(event), LapsedContext())
        b_done.set()
        a.join(timeout=120)
    finally:
        session.events.unregister("before-parameter-build.s3.PutObject", stop_a_at_its_claim)
    assert results["a"] == results["b"] and results["b"]["registered"] and results["b"]["version"] == 1
    assert results["b"]["status"] == "PendingManualApproval" and len(_packages(aws)) == 1


def test_register_base_invoked_four_times_at_once_registers_once(registry, aws, function_environment, tiny_base):
    digest = upload_base(registry, LocalFolder(tiny_base), MODEL_ID)
    function = load_handler("register_base")
    done = invoke_concurrently(function, lambda: {"model_id": MODEL_ID, "content_digest": digest})
    assert done[0]["registered"] and done[0]["version"] == 1 and len(_packages(aws)) == 1


@pytest.mark.parametrize(
    ("request_", "reason"),
    [
        ({"model_id": MODEL_ID}, "needs non-empty string fields ['content_digest']"),
        ({"model_id": MODEL_ID, "content_digest": "sha256:" + "0" * 64}, "no base manifest at s3://"),
        ({"model_id": MODEL_ID, "content_digest": "md5:abc"}, "is not of the form sha256:<64 hex digits>"),
        ({"model_id": "llama", "content_digest": "sha256:" + "0" * 64}, "must look like '<org>/<model>'"),
    ],
)
def test_register_base_refuses_bad_events_with_the_reason(registry, aws, function_environment, request_, reason):
    result = load_handler("register_base").register(request_, registry)
    assert result["registered"] is False and reason in result["reason"]
    assert _packages(aws) == []


def test_import_base_copies_from_s3_and_registers(registry, aws, function_environment, tiny_base):
    aws["s3"].create_bucket(Bucket=SOURCE_BUCKET)
    for path in tiny_base.rglob("*"):
        if path.is_file():
            aws["s3"].upload_file(str(path), SOURCE_BUCKET, f"llama/{path.relative_to(tiny_base)}")
    event = {"source": f"s3://{SOURCE_BUCKET}/llama/", "model_id": MODEL_ID, "licence": "llama2"}
    function = load_handler("import_base")
    result = function.handler(event, LambdaContext())
    assert result["imported"] and result["weights_digest"] == folder_weights_digest(tiny_base)
    # what register-base takes: the digest that names the version's folder
    assert result["content_digest"] == folder_content_digest(tiny_base)
    assert (
        result["package_arn"]
        == load_handler("register_base").register(
            {"model_id": MODEL_ID, "content_digest": result["content_digest"]}, registry
        )["package_arn"]
    )
    assert function.handler(dict(event), LambdaContext()) == result  # a retried invocation: the stored result
    assert len(_packages(aws)) == 1


def test_import_base_refuses_a_source_that_is_no_model_and_writes_nothing(registry, aws, function_environment):
    aws["s3"].create_bucket(Bucket=SOURCE_BUCKET)
    aws["s3"].put_object(Bucket=SOURCE_BUCKET, Key="empty/README.md", Body=b"not a model")
    event = {"source": f"s3://{SOURCE_BUCKET}/empty/", "model_id": MODEL_ID}
    result = load_handler("import_base").run_import(event, registry)
    assert result == {
        "imported": False,
        "reason": f"s3://{SOURCE_BUCKET}/empty/: not a Hugging Face model folder (no config.json)",
    }
    assert aws["s3"].list_objects_v2(Bucket="loraops-test-artifacts").get("Contents", []) == []
    assert _packages(aws) == []
