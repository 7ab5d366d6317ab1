"""Promotion from staging to prod (issue #21), end to end against the local AWS emulator: two environments in two
regions (staging us-east-1, prod us-west-2, as cdk.json has them), each with its bucket and its groups, boto3 over HTTP.
What reaches prod and with which lineage and approval, promoting twice or concurrently, the refusals that write nothing,
and a copy while staging changes.

The models are small hand-made Hugging Face folders (valid safetensors, a manifest the registry checks): what is
tested here is the registry and S3, not the weights. The world both environments share is in conftest.py."""

from __future__ import annotations

import threading

import pytest

from loraops.manifest import MANIFEST_FILE
from loraops.naming import TAG_APPROVAL_POLICY
from loraops.packages import APPROVED, PENDING
from loraops.promotion import Promotion, PromotionError
from loraops.registry import Registry
from tests.registry.conftest import (
    BASE_GROUP,
    PROD_BUCKET,
    PROD_REGION,
    STAGING,
    STAGING_BUCKET,
    _clients,
    _prod_objects,
    _prod_packages,
)
from tests.registry.conftest import PROMOTED_JOB as JOB


@pytest.fixture
def world(promotion_world):
    """conftest.py's promotion_world, under the name these tests use."""
    return promotion_world


class _S3Calls:
    """(operation, key) of every call an S3 client makes, from the API parameters botocore is given."""

    def __init__(self, client) -> None:
        self.calls: list[tuple[str, str]] = []
        client.meta.events.register("before-parameter-build.s3.*", self._record)

    def _record(self, event_name: str, params: dict, **_) -> None:
        self.calls.append((event_name.rsplit(".", 1)[-1], params.get("Key", "")))


def _promotion(world, prod_approval: str = "manual") -> Promotion:
    """A promotion with its own clients (as each Lambda invocation has)."""
    staging, prod = _clients(world["emulator"], STAGING.region), _clients(world["emulator"], PROD_REGION)
    return Promotion(
        Registry(staging["sagemaker"], staging["s3"], STAGING_BUCKET, STAGING.region),
        Registry(prod["sagemaker"], prod["s3"], PROD_BUCKET, PROD_REGION, approval=prod_approval),
        STAGING,
    )


def test_an_approved_base_and_adapter_reach_prod_copied_inside_s3_with_their_lineage_and_wait_for_approval(world):
    promotion = _promotion(world)
    calls = _S3Calls(promotion.target.s3)

    base = promotion.promote(world["base"].arn)
    promotion.target.decide(base.arn, approve=True)  # prod's approver
    adapter = promotion.promote(world["adapter"].arn)

    for promoted, source in ((base, world["base"]), (adapter, world["adapter"])):
        assert promoted.status == PENDING and promoted.group == source.group
        assert promoted.model_data_uri == f"s3://{PROD_BUCKET}/{source.model_data_prefix}"  # the same prefix
        assert promoted.metadata["sourcePackageArn"] == source.arn
        assert promoted.metadata["sourceEnvironment"] == "staging"
        assert promoted.metadata["contentDigest"] == source.metadata["contentDigest"]
        promotion.target.verify_content(promoted)  # prod's own check of what it would serve
    assert adapter.metadata["baseModelPackageArn"] == base.arn  # prod's base, not staging's
    assert adapter.metadata["manifest"] == f"s3://{PROD_BUCKET}/{adapter.model_data_prefix}{MANIFEST_FILE}"
    assert adapter.metadata["trainingJob"] == JOB and adapter.metadata["datasetName"] == "databricks-dolly-15k"
    staging_s3 = world["staging"]["s3"]
    for key, body in _prod_objects(world).items():
        assert staging_s3.get_object(Bucket=STAGING_BUCKET, Key=key)["Body"].read() == body
    # the bytes moved inside S3: into prod only by UploadPartCopy (PutObject wrote the registration claims only)
    writes = [(op, key) for op, key in calls.calls if op in ("PutObject", "UploadPart")]
    assert writes and all(op == "PutObject" and key.startswith("registrations/") for op, key in writes)
    assert sorted(key for op, key in calls.calls if op == "UploadPartCopy") == sorted(_prod_objects(world))


@pytest.mark.parametrize(("environment", "expected"), [("auto", APPROVED), ("manual", PENDING)])
def test_a_promoted_package_is_approved_only_where_prods_policy_is_auto(world, environment, expected):
    """prod's groups say auto here; the environment's own policy (the function's APPROVAL) can only make it stricter."""
    sagemaker = world["prod"]["sagemaker"]
    group = sagemaker.describe_model_package_group(ModelPackageGroupName=BASE_GROUP)["ModelPackageGroupArn"]
    sagemaker.add_tags(ResourceArn=group, Tags=[{"Key": TAG_APPROVAL_POLICY, "Value": "auto"}])
    assert _promotion(world, prod_approval=environment).promote(world["base"].arn).status == expected


def test_promoting_twice_gives_one_package_and_copies_nothing_the_second_time(world):
    first = _promotion(world).promote(world["base"].arn)
    before = _prod_objects(world)
    promotion = _promotion(world)
    calls = _S3Calls(promotion.target.s3)
    assert promotion.promote(world["base"].arn) == first
    assert _prod_objects(world) == before and len(_prod_packages(world)) == 1
    assert not [op for op, _ in calls.calls if op in ("UploadPartCopy", "CompleteMultipartUpload", "PutObject")]


def test_two_concurrent_promotions_give_one_package(world):
    """Each promotion holds back its CreateModelPackage until the other has found the registration claim taken,
    so both are inside the registration at once (whichever claims first)."""
    promotions = [_promotion(world), _promotion(world)]
    refused = [threading.Event(), threading.Event()]
    start, results, errors = threading.Barrier(2), [None, None], []

    def hold_until_the_other_is_refused(i: int):
        def hook(**_):
            assert refused[1 - i].wait(timeout=120), "the other promotion never reached the claim"

        return hook

    def note_refusal(i: int):
        def hook(parsed, **_):
            if parsed.get("Error", {}).get("Code") == "PreconditionFailed":
                refused[i].set()

        return hook

    for i, promotion in enumerate(promotions):
        promotion.target.sagemaker.meta.events.register(
            "before-call.sagemaker.CreateModelPackage", hold_until_the_other_is_refused(i)
        )
        promotion.target.s3.meta.events.register("after-call.s3.PutObject", note_refusal(i))

    def run(i: int) -> None:
        start.wait()
        try:
            results[i] = promotions[i].promote(world["base"].arn)
        except Exception as error:  # reported below
            errors.append(error)

    threads = [threading.Thread(target=run, args=(i,)) for i in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=300)
    assert not errors and results[0] is not None and results[0] == results[1]
    assert any(event.is_set() for event in refused)
    assert len(_prod_packages(world)) == 1


def _refusals():
    def not_approved(world):
        staging = _promotion(world).source
        staging.decide(world["adapter"].arn, approve=False, reason="worse than v1")
        return world["adapter"].arn, r"is Rejected in staging; only Approved packages are promoted"

    def other_environment(world):
        return world["base"].arn.replace(":us-east-1:", f":{PROD_REGION}:"), r"promotions come from staging"

    def other_account(world):
        return world["base"].arn.replace(":123456789012:", ":111111111111:"), r"account 111111111111"

    def tampered(world):
        promotion = _promotion(world)
        promotion.target.decide(promotion.promote(world["base"].arn).arn, approve=True)
        key = world["adapter"].model_data_prefix + "adapter_config.json"
        world["staging"]["s3"].put_object(Bucket=STAGING_BUCKET, Key=key, Body=b'{"r": 64}')
        return world["adapter"].arn, r"fails digest verification in staging: .*adapter_config.json changed"

    def base_not_in_prod(world):
        return world["adapter"].arn, r"promote its base and approve it first"

    def not_a_package(world):
        return "arn:aws:sagemaker:us-east-1:123456789012:model-package-group/x", "not a versioned model package ARN"

    return [not_approved, other_environment, other_account, tampered, base_not_in_prod, not_a_package]


@pytest.mark.parametrize("case", _refusals(), ids=lambda f: f.__name__)
def test_a_refused_promotion_writes_nothing(world, case):
    arn, message = case(world)
    before = (_prod_objects(world), _prod_packages(world))
    with pytest.raises(PromotionError, match=message):
        _promotion(world).promote(arn)
    assert (_prod_objects(world), _prod_packages(world)) == before


def test_a_base_pending_in_prod_does_not_carry_its_adapters_over(world):
    _promotion(world).promote(world["base"].arn)  # pending in prod
    before = _prod_objects(world)
    with pytest.raises(PromotionError, match="promote its base and approve it first"):
        _promotion(world).promote(world["adapter"].arn)
    assert _prod_objects(world) == before and len(_prod_packages(world)) == 1


def test_a_prod_key_holding_other_bytes_is_refused_before_anything_is_copied(world):
    key = world["base"].model_data_prefix + "model.safetensors"  # copied after config.json, were it not checked first
    world["prod"]["s3"].put_object(Bucket=PROD_BUCKET, Key=key, Body=b"other bytes")
    with pytest.raises(PromotionError, match="already holds other bytes"):
        _promotion(world).promote(world["base"].arn)
    assert _prod_objects(world) == {key: b"other bytes"} and _prod_packages(world) == []


def test_the_copy_takes_the_verified_version_when_staging_changes_during_it(world):
    """An object overwritten in staging after verification (here: at the first part copy) is copied as verified."""
    promotion = _promotion(world)
    key = world["adapter"].model_data_prefix + "adapter_config.json"
    verified = world["staging"]["s3"].get_object(Bucket=STAGING_BUCKET, Key=key)["Body"].read()
    promotion.promote(world["base"].arn)
    promotion.target.decide(_prod_packages(world)[0]["ModelPackageArn"], approve=True)
    overwritten = []

    def overwrite(**_):
        if not overwritten:
            overwritten.append(world["staging"]["s3"].put_object(Bucket=STAGING_BUCKET, Key=key, Body=b"{}"))

    promotion.target.s3.meta.events.register("before-call.s3.UploadPartCopy", overwrite)
    adapter = promotion.promote(world["adapter"].arn)
    assert overwritten
    assert world["prod"]["s3"].get_object(Bucket=PROD_BUCKET, Key=key)["Body"].read() == verified
    promotion.target.verify_content(adapter)
