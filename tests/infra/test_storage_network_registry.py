"""Template assertions on the storage, network and registry stacks: the key and buckets (HTTPS only), an isolated
network with flow logs and endpoints and no security group open to the internet, the registry's groups and tags;
for every environment (the session's one synth, nag gate included)."""

from __future__ import annotations

import pytest
from aws_cdk.assertions import Match

from infra.stacks.network import INTERFACE_ENDPOINTS
from tests.infra.conftest import ENVIRONMENTS

pytestmark = pytest.mark.parametrize("env", ENVIRONMENTS)


def test_storage_key_and_buckets(env, templates, synthesized):
    t = templates[(env, "storage")]
    config = synthesized[env].config
    t.resource_count_is("AWS::KMS::Key", 1)
    t.has_resource_properties("AWS::KMS::Key", {"EnableKeyRotation": True})
    t.has_resource_properties("AWS::KMS::Alias", {"AliasName": f"alias/loraops-{env}-artifacts"})
    t.resource_count_is("AWS::S3::Bucket", 2)
    t.has_resource_properties(
        "AWS::S3::Bucket",
        {
            "BucketName": config.artifact_bucket_name,
            "BucketEncryption": {
                "ServerSideEncryptionConfiguration": [
                    {
                        "BucketKeyEnabled": True,
                        "ServerSideEncryptionByDefault": {
                            "SSEAlgorithm": "aws:kms",
                            "KMSMasterKeyID": Match.any_value(),
                        },
                    }
                ]
            },
            "VersioningConfiguration": {"Status": "Enabled"},
            "PublicAccessBlockConfiguration": {
                "BlockPublicAcls": True,
                "BlockPublicPolicy": True,
                "IgnorePublicAcls": True,
                "RestrictPublicBuckets": True,
            },
            "LoggingConfiguration": {"DestinationBucketName": Match.any_value(), "LogFilePrefix": "artifact-bucket/"},
            "LifecycleConfiguration": {
                "Rules": Match.array_with(
                    [
                        Match.object_like(
                            {
                                "NoncurrentVersionExpiration": {"NoncurrentDays": config.noncurrent_version_days},
                                "Status": "Enabled",
                            }
                        ),
                        Match.object_like(
                            {"AbortIncompleteMultipartUpload": {"DaysAfterInitiation": 7}, "Status": "Enabled"}
                        ),
                    ]
                )
            },
        },
    )
    expected_deletion = "Delete" if config.removal_policy == "destroy" else "RetainExceptOnCreate"
    for resource in t.find_resources("AWS::S3::Bucket").values():
        assert resource["DeletionPolicy"] == expected_deletion


def test_every_bucket_denies_plain_http(env, templates):
    t = templates[(env, "storage")]
    policies = t.find_resources("AWS::S3::BucketPolicy")
    assert len(policies) == 2
    for policy in policies.values():
        statements = policy["Properties"]["PolicyDocument"]["Statement"]
        assert any(
            s["Effect"] == "Deny" and s["Condition"] == {"Bool": {"aws:SecureTransport": "false"}} for s in statements
        )


def test_network_is_isolated_with_flow_logs_and_endpoints(env, templates, synthesized):
    t = templates[(env, "network")]
    zones = synthesized[env].config.availability_zones
    t.resource_count_is("AWS::EC2::VPC", 1)
    t.resource_count_is("AWS::EC2::Subnet", len(zones))
    t.resource_count_is("AWS::EC2::InternetGateway", 0)
    t.resource_count_is("AWS::EC2::NatGateway", 0)
    for subnet in t.find_resources("AWS::EC2::Subnet").values():
        assert subnet["Properties"]["MapPublicIpOnLaunch"] is False
    assert sorted(s["Properties"]["AvailabilityZone"] for s in t.find_resources("AWS::EC2::Subnet").values()) == zones
    t.has_resource_properties("AWS::EC2::FlowLog", {"TrafficType": "ALL", "ResourceType": "VPC"})
    t.resource_count_is("AWS::EC2::VPCEndpoint", len(INTERFACE_ENDPOINTS) + 2)  # + the S3 and DynamoDB gateways
    services = [str(e["Properties"]["ServiceName"]) for e in t.find_resources("AWS::EC2::VPCEndpoint").values()]
    for suffix in (
        "sagemaker.api",
        "sagemaker.runtime",
        "studio",
        "notebook",
        "sts",
        "ecr.api",
        "ecr.dkr",
        "logs",
        "kms",
        "s3",
        ".resource-groups",  # Studio's collections (resource-groups:*) and their members (the tagging API)
        ".tagging",
    ):
        assert any(suffix in s for s in services), f"no VPC endpoint for {suffix}: {services}"
    t.has_resource_properties("AWS::EC2::VPCEndpoint", {"VpcEndpointType": "Gateway"})


def test_registry_groups_and_tags(env, templates, synthesized):
    t = templates[(env, "registry")]
    config = synthesized[env].config
    groups = {
        g["Properties"]["ModelPackageGroupName"]: {tag["Key"]: tag["Value"] for tag in g["Properties"]["Tags"]}
        for g in t.find_resources("AWS::SageMaker::ModelPackageGroup").values()
    }
    assert len(groups) == 1 + len(config.fine_tuned_lines)
    base = groups[config.base_group]
    assert base["modelType"] == "BaseModel" and base["fineTuned"] == "False"
    for line in config.fine_tuned_lines:
        tags = groups[line.group_name(config.base_model_id)]
        assert tags["fineTuned"] == "True"
        assert tags["sourceDataset"] == line.dataset
        assert tags["modelType"] == ("LoRAAdapter" if line.mode.value == "adapter" else "MergedFineTunedModel")
    for tags in groups.values():
        assert tags["loraops:approvalPolicy"] == config.approval
        assert tags["loraops:environment"] == env


def test_no_security_group_is_open_to_the_internet(env, templates):
    for concern in ("network", "studio"):
        for group in templates[(env, concern)].find_resources("AWS::EC2::SecurityGroup").values():
            for rule in group["Properties"].get("SecurityGroupIngress", []):
                assert rule.get("CidrIp") != "0.0.0.0/0" and rule.get("CidrIpv6") != "::/0", rule
        for rule in templates[(env, concern)].find_resources("AWS::EC2::SecurityGroupIngress").values():
            assert rule["Properties"].get("CidrIp") != "0.0.0.0/0", rule
