"""Template assertions on the studio stack: a VPC-only domain, and an execution role scoped to loraops' prefixes with
the collection permissions; for every environment (the session's one synth, nag gate included)."""

from __future__ import annotations

import pytest
from aws_cdk.assertions import Match

from loraops import s3_layout
from tests.infra.conftest import ENVIRONMENTS

pytestmark = pytest.mark.parametrize("env", ENVIRONMENTS)


def _one(template, type_):
    resources = template.find_resources(type_)
    assert len(resources) == 1, f"expected one {type_}, found {len(resources)}"
    return next(iter(resources.values()))["Properties"]


def test_studio_domain_is_vpc_only(env, templates, synthesized):
    t = templates[(env, "studio")]
    config = synthesized[env].config
    domain = _one(t, "AWS::SageMaker::Domain")
    assert domain["AppNetworkAccessType"] == "VpcOnly"
    assert domain["AuthMode"] == "IAM"
    assert domain["KmsKeyId"]
    assert domain["DomainName"] == f"loraops-{env}"
    assert len(domain["SubnetIds"]) == len(config.availability_zones)
    assert domain["DefaultUserSettings"]["SecurityGroups"]
    t.resource_count_is("AWS::SageMaker::UserProfile", len(config.user_profiles))


def _statements(template):
    policy = _one(template, "AWS::IAM::Policy")
    return {s["Sid"]: s for s in policy["PolicyDocument"]["Statement"]}


def test_execution_role_is_scoped_to_loraops_prefixes(env, templates, synthesized):
    t = templates[(env, "studio")]
    bucket = synthesized[env].config.artifact_bucket_name
    t.has_resource_properties(
        "AWS::IAM::Role",
        {
            "RoleName": f"loraops-{env}-sagemaker-execution",
            "AssumeRolePolicyDocument": {
                "Statement": [Match.object_like({"Principal": {"Service": "sagemaker.amazonaws.com"}})]
            },
        },
    )
    assert not _one(t, "AWS::IAM::Role").get("ManagedPolicyArns")
    statements = _statements(t)
    read = statements["ReadBaseModelsAndDatasets"]
    assert read["Action"] == "s3:GetObject"
    assert sorted(read["Resource"]) == sorted(f"arn:aws:s3:::{bucket}/{p}*" for p in s3_layout.READ_ONLY_PREFIXES)
    write = statements["ReadWriteFineTuneOutputs"]
    assert "s3:PutObject" in write["Action"]
    assert sorted(write["Resource"]) == sorted(f"arn:aws:s3:::{bucket}/{p}*" for p in s3_layout.READ_WRITE_PREFIXES)
    assert statements["ListLoraopsPrefixes"]["Condition"]["StringLike"]["s3:prefix"]
    assert "kms:Decrypt" in statements["UseArtifactKey"]["Action"]
    assert "*" not in str(statements["UseArtifactKey"]["Resource"])
    passrole = statements["PassOwnRoleToSageMaker"]
    assert passrole["Condition"] == {"StringEquals": {"iam:PassedToService": "sagemaker.amazonaws.com"}}


def test_execution_role_has_collection_permissions(env, templates, synthesized):
    config = synthesized[env].config
    statements = _statements(templates[(env, "studio")])
    group_arn = f"arn:aws:resource-groups:{config.region}:{config.account}:group/*"
    create = statements["CollectionsCreate"]
    assert create["Action"] == "resource-groups:CreateGroup" and create["Resource"] == "*"  # takes no ARN
    assert create["Condition"] == {
        "StringEquals": {"aws:RequestTag/sagemaker:collection": "true"},
        "ForAllValues:StringLike": {"aws:TagKeys": ["sagemaker:collection*"]},
    }
    tag_and_delete = statements["CollectionsTagAndDelete"]
    assert sorted(tag_and_delete["Action"]) == ["resource-groups:DeleteGroup", "resource-groups:Tag"]
    assert tag_and_delete["Resource"] == group_arn
    assert tag_and_delete["Condition"] == {"StringEquals": {"aws:ResourceTag/sagemaker:collection": "true"}}
    assert sorted(statements["CollectionsRead"]["Action"]) == [
        "resource-groups:GetGroupQuery",
        "resource-groups:ListGroupResources",
    ]
    assert statements["CollectionsSearch"] == {
        "Sid": "CollectionsSearch",
        "Effect": "Allow",
        "Action": "tag:GetResources",
        "Resource": "*",
    }
    tagging = statements["CollectionsTagModelPackageGroups"]
    assert sorted(tagging["Action"]) == [
        "sagemaker:AddTags",
        "sagemaker:DeleteTags",
        "sagemaker:DescribeModelPackageGroup",
    ]
    assert tagging["Resource"] == f"arn:aws:sagemaker:{config.region}:{config.account}:model-package-group/*"
