"""Template assertions for every stack of every environment (one shared synth, nag gate included)."""

from __future__ import annotations

import pytest
from aws_cdk.assertions import Match

from infra.stacks.network import INTERFACE_ENDPOINTS
from loraops import s3_layout
from tests.infra.conftest import CONCERNS, ENVIRONMENTS

pytestmark = pytest.mark.parametrize("env", ENVIRONMENTS)


def _one(template, type_):
    resources = template.find_resources(type_)
    assert len(resources) == 1, f"expected one {type_}, found {len(resources)}"
    return next(iter(resources.values()))["Properties"]


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


def test_environment_tags_on_every_stack(env, synthesized):
    for stack in synthesized[env].stacks:
        assert stack.tags.tag_values()["loraops:environment"] == env
        assert stack.tags.tag_values()["project"] == "loraops"


def test_training_image_asset_is_staged_from_the_trainer(env, synthesized):
    import json
    import subprocess
    from pathlib import Path

    from infra.image_build import TRAINER
    from infra.images import TRAINING_IMAGE
    from infra.stacks.training import training_base_image
    from tests.helpers import ROOT

    stack = synthesized[env].training
    assembly = stack.node.root.synth()  # already synthesized once: returns the same cloud assembly
    artifact = assembly.get_stack_artifact(stack.artifact_id)
    assets = json.loads(Path(assembly.directory, f"{stack.artifact_id}.assets.json").read_text())
    (image,) = assets["dockerImages"].values()
    source = image["source"]
    assert source["dockerFile"] == "training_container/Dockerfile"
    assert source["dockerBuildArgs"]["BASE_IMAGE"] == training_base_image(synthesized[env].config.region)
    commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=ROOT, capture_output=True, text=True).stdout.strip()
    assert source["dockerBuildArgs"]["LORAOPS_GIT_SHA"] == commit  # every manifest the image writes names it
    staged = Path(assembly.directory, source["directory"])
    top = sorted(p.name for p in staged.iterdir())
    assert top == sorted({Path(source).parts[0] for source in TRAINER.sources}), top  # infra/image_build.py
    dockerfile = (staged / "training_container" / "Dockerfile").read_text()
    # one constant (infra.images.TRAINING_IMAGE) names the base; the Dockerfile only receives it
    assert (
        "ARG BASE_IMAGE\n" in dockerfile and "dkr.ecr" not in dockerfile and TRAINING_IMAGE.framework not in dockerfile
    )
    assert (staged / "training_container" / "Dockerfile").is_file()
    assert (staged / "training_container" / "loraops_trainer" / "run.py").is_file()
    assert not list(staged.rglob("__pycache__"))
    assert artifact.stack_name == f"loraops-{env}-training"


def test_no_security_group_is_open_to_the_internet(env, templates):
    for concern in ("network", "studio"):
        for group in templates[(env, concern)].find_resources("AWS::EC2::SecurityGroup").values():
            for rule in group["Properties"].get("SecurityGroupIngress", []):
                assert rule.get("CidrIp") != "0.0.0.0/0" and rule.get("CidrIpv6") != "::/0", rule
        for rule in templates[(env, concern)].find_resources("AWS::EC2::SecurityGroupIngress").values():
            assert rule["Properties"].get("CidrIp") != "0.0.0.0/0", rule


def test_every_template_has_resources(env, templates):
    """CloudFormation rejects a template without resources ('At least one Resources member must be defined')."""
    for concern in CONCERNS:
        assert templates[(env, concern)].to_json().get("Resources"), concern


def test_trainer_image_uri_is_published(env, templates):
    templates[(env, "training")].has_resource_properties(
        "AWS::SSM::Parameter", {"Name": f"/loraops-{env}/trainer-image-uri", "Type": "String"}
    )


def test_stacks_deploy_after_every_stack_they_name(env, synthesized):
    """Every dependency (references and the explicit ones for literal names) comes earlier in make deploy's order, and
    the stacks that name the execution role (studio's) literally depend on studio."""
    from infra.deploy import DEPLOY_ORDER

    stacks = synthesized[env]
    position = {concern: DEPLOY_ORDER.index(concern) for concern in CONCERNS}
    for concern in CONCERNS:
        for dependency in getattr(stacks, concern).dependencies:
            before = dependency.stack_name.removeprefix(f"{stacks.config.prefix}-")
            assert position[before] < position[concern], f"{concern} deploys before {before}, which it depends on"

    def depends(concern: str) -> set[str]:
        return {d.stack_name.removeprefix(f"{stacks.config.prefix}-") for d in getattr(stacks, concern).dependencies}

    assert {"studio", "network", "storage"} <= depends("serving")
    assert {"studio", "training", "network", "storage"} <= depends("workflow")
    assert {"studio", "registry"} <= depends("registration")


#: Types whose retained, statically named resources CloudFormation's auto-import (``--import-existing-resources``)
#: adopts on a redeploy: their primary identifier is the name in the template.
ADOPTABLE = {
    "AWS::S3::Bucket": "BucketName",
    "AWS::DynamoDB::Table": "TableName",
    "AWS::Logs::LogGroup": "LogGroupName",
    "AWS::ResourceGroups::Group": "Name",
}


def test_retained_named_resources_are_adopted_or_checked_on_redeploy(env, synthesized, templates):
    """A destroyed ``retain`` environment leaves these behind; make deploy adopts each (or, for package groups, whose
    identifier is their read-only ARN, the preflight names each one left outside a stack)."""
    from infra import deploy, stack_plan

    config = synthesized[env].config
    for concern in CONCERNS:
        for logical, resource in templates[(env, concern)].to_json()["Resources"].items():
            if resource.get("DeletionPolicy") not in ("Retain", "RetainExceptOnCreate"):
                continue
            kind, properties = resource["Type"], resource.get("Properties", {})
            if kind == "AWS::SageMaker::ModelPackageGroup":
                assert properties["ModelPackageGroupName"] in stack_plan.package_groups(config)
            elif kind in ADOPTABLE:
                name = properties.get(ADOPTABLE[kind])
                assert name is None or isinstance(name, str), f"{logical}: auto-import needs a literal name"
            else:
                assert not any(k.endswith("Name") for k in properties), f"{logical} ({kind}): named, retained"
    adopt = "--import-existing-resources" in deploy.deploy_command(config, deploy.StackPlan([]))
    assert adopt == (config.removal_policy == "retain")
