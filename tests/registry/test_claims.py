"""S3's answers to racing conditional writes, against botocore's own model of the S3 API (no emulator answers 409:
botocore's Stubber stands in for S3 here)."""

from __future__ import annotations

import datetime

import boto3
import pytest
from botocore.stub import Stubber

from loraops.registry import Registry

BUCKET = "loraops-test-artifacts"


@pytest.fixture
def stubbed():
    s3 = boto3.client("s3", region_name="us-east-1", aws_access_key_id="x", aws_secret_access_key="x")
    with Stubber(s3) as stub:
        yield Registry(sagemaker=None, s3=s3, bucket=BUCKET, region="us-east-1"), stub


@pytest.mark.parametrize(("code", "status"), [("PreconditionFailed", 412), ("ConditionalRequestConflict", 409)])
def test_a_claim_lost_to_a_concurrent_writer_is_not_an_error(stubbed, code, status):
    """S3 answers 412 when the key exists and 409 while another conditional write to it is in flight: both mean
    another registration holds the claim."""
    registry, stub = stubbed
    stub.add_client_error("put_object", service_error_code=code, http_status_code=status)
    now = datetime.datetime.now(datetime.UTC)
    stub.add_response("head_object", {"LastModified": now, "ETag": '"e"'}, {"Bucket": BUCKET, "Key": "claim"})
    assert registry._claim("claim") is False
    stub.assert_no_pending_responses()


def test_a_bucket_whose_tags_cannot_be_read_is_an_error_not_an_untagged_bucket(stubbed):
    registry, stub = stubbed
    stub.add_client_error("get_bucket_tagging", service_error_code="AccessDenied", http_status_code=403)
    with pytest.raises(Exception, match="AccessDenied"):
        registry.environment  # noqa: B018 - the property reads the tags
    stub.add_client_error("get_bucket_tagging", service_error_code="NoSuchTagSet", http_status_code=404)
    assert registry.environment is None
