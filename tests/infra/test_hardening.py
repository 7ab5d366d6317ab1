"""Deploy-readiness and least privilege: one assertion per defect found in review, for every environment."""

from __future__ import annotations

import json

import pytest

from loraops import s3_layout
from loraops.images import image_uri
from tests.infra.conftest import CONCERNS, ENVIRONMENTS

pytestmark = pytest.mark.parametrize("env", ENVIRONMENTS)


def _statements(templates, env) -> dict[str, dict]:
    (policy,) = templates[(env, "studio")].find_resources("AWS::IAM::Policy").values()
    return {s["Sid"]: s for s in policy["Properties"]["PolicyDocument"]["Statement"]}


def _actions(statement) -> list[str]:
    actions = statement["Action"]
    return [actions] if isinstance(actions, str) else actions


def test_execution_role_cannot_mint_studio_sign_in_urls(env, templates):
    actions = [a for s in _statements(templates, env).values() for a in _actions(s)]
    assert "sagemaker:CreatePresignedDomainUrl" not in actions


def test_kms_grants_only_for_aws_resources(env, templates):
    grants = [s for s in _statements(templates, env).values() if "kms:CreateGrant" in _actions(s)]
    assert len(grants) == 1
    assert grants[0]["Condition"] == {"Bool": {"kms:GrantIsForAWSResource": "true"}}


def test_network_interfaces_only_in_the_loraops_vpc(env, templates):
    statements = _statements(templates, env)
    create = [s for s in statements.values() if "ec2:CreateNetworkInterface" in _actions(s)]
    assert len(create) == 1 and create[0]["Resource"] != "*"
    assert "ec2:Vpc" in create[0]["Condition"]["ArnEquals"]
    assert statements["DescribeNetwork"]["Resource"] == "*"
    assert all(a.startswith("ec2:Describe") for a in _actions(statements["DescribeNetwork"]))


def test_list_bucket_prefixes_are_each_listed_once_with_their_bare_names(env, templates):
    prefixes = _statements(templates, env)["ListLoraopsPrefixes"]["Condition"]["StringLike"]["s3:prefix"]
    assert len(prefixes) == len(set(prefixes))
    expected = {f"{p}*" for p in s3_layout.READ_ONLY_PREFIXES + s3_layout.READ_WRITE_PREFIXES}
    expected |= {p.rstrip("/") for p in s3_layout.READ_ONLY_PREFIXES + s3_layout.READ_WRITE_PREFIXES}
    assert set(prefixes) == expected


def test_role_reads_the_trainer_image_parameter(env, templates, synthesized):
    read = _statements(templates, env)["ReadTrainerImageUri"]
    assert read["Action"] == "ssm:GetParameter"
    assert f":parameter/loraops-{env}/trainer-image-uri" in json.dumps(read["Resource"])


def test_images_are_pulled_from_the_regions_dlc_account(env, templates, synthesized):
    account = image_uri("training", synthesized[env].config.region).split(".")[0]
    pull = _statements(templates, env)["PullImages"]
    assert any(f":{account}:repository/*" in json.dumps(r) for r in pull["Resource"])


def test_vpc_has_the_endpoints_the_product_calls(env, templates):
    services = [
        json.dumps(e["Properties"]["ServiceName"])
        for e in templates[(env, "network")].find_resources("AWS::EC2::VPCEndpoint").values()
    ]
    for suffix in ("sagemaker.metrics", "monitoring", "ssm"):
        assert any(f".{suffix}" in s for s in services), suffix


def test_workload_group_allows_all_traffic_between_its_members(env, templates):
    """Multi-node torch_distributed uses port 7777 and EFA needs every protocol between the nodes."""
    t = templates[(env, "network")]
    ingress = [r["Properties"] for r in t.find_resources("AWS::EC2::SecurityGroupIngress").values()]
    egress = [r["Properties"] for r in t.find_resources("AWS::EC2::SecurityGroupEgress").values()]
    for rules in (ingress, egress):
        assert any(
            r["IpProtocol"] == "-1" and ("SourceSecurityGroupId" in r or "DestinationSecurityGroupId" in r)
            for r in rules
        ), rules


def test_default_security_group_is_restricted(env, templates):
    assert templates[(env, "network")].find_resources("Custom::VpcRestrictDefaultSG")


def test_flow_logs_are_encrypted_with_a_rotated_key(env, templates):
    t = templates[(env, "network")]
    (group,) = t.find_resources("AWS::Logs::LogGroup").values()
    assert group["Properties"]["KmsKeyId"]
    t.has_resource_properties("AWS::KMS::Key", {"EnableKeyRotation": True})


def test_endpoint_policies_follow_the_configuration(env, templates, synthesized):
    config = synthesized[env].config
    endpoints = templates[(env, "network")].find_resources("AWS::EC2::VPCEndpoint").values()
    gateway = next(
        e["Properties"]
        for e in endpoints
        if e["Properties"]["VpcEndpointType"] == "Gateway" and ".s3" in json.dumps(e["Properties"]["ServiceName"])
    )
    with_policy = [e["Properties"] for e in endpoints if "PolicyDocument" in e["Properties"]]
    if not config.endpoint_policies:
        assert with_policy == []
        return
    s3_resources = json.dumps(gateway["PolicyDocument"])
    assert config.artifact_bucket_name in s3_resources and "starport-layer-bucket" in s3_resources
    allow_all = [s for s in gateway["PolicyDocument"]["Statement"] if s["Resource"] in ("*", ["*"])]
    assert allow_all == [], "the S3 endpoint must not reach every bucket"
    interface = [
        e for e in with_policy if e["VpcEndpointType"] == "Interface" or ".dynamodb" in json.dumps(e["ServiceName"])
    ]
    assert len(interface) >= 9
    for endpoint in interface:
        for statement in endpoint["PolicyDocument"]["Statement"]:
            assert statement["Condition"] == {"StringEquals": {"aws:PrincipalAccount": config.account}}


def test_bucket_objects_only_through_the_vpc_endpoint_where_configured(env, templates, synthesized):
    config = synthesized[env].config
    policies = templates[(env, "storage")].find_resources("AWS::S3::BucketPolicy").values()
    denies = [
        s
        for p in policies
        for s in p["Properties"]["PolicyDocument"]["Statement"]
        if s.get("Sid") == "ObjectsOnlyThroughTheVpcEndpoint"
    ]
    if not config.vpc_endpoint_only_bucket_access:
        assert denies == []
        return
    (deny,) = denies
    assert deny["Effect"] == "Deny" and "aws:SourceVpce" in deny["Condition"]["StringNotEquals"]
    assert config.execution_role_name in json.dumps(deny["Condition"]["ArnNotEquals"])


def test_teardown_and_redeploy(env, templates, synthesized):
    """destroy: `cdk destroy` empties and removes the versioned buckets; retain: data is kept, but a failed
    first create is rolled back without leaving a bucket or key whose name blocks the next deploy."""
    config = synthesized[env].config
    t = templates[(env, "storage")]
    buckets = t.find_resources("AWS::S3::Bucket").values()
    auto_delete = t.find_resources("Custom::S3AutoDeleteObjects")
    if config.removal_policy == "destroy":
        assert len(auto_delete) == len(buckets)
        assert {b["DeletionPolicy"] for b in buckets} == {"Delete"}
    else:
        assert auto_delete == {}
        for concern in ("storage", "network"):
            for type_ in ("AWS::S3::Bucket", "AWS::KMS::Key", "AWS::Logs::LogGroup"):
                for resource in templates[(env, concern)].find_resources(type_).values():
                    assert resource["DeletionPolicy"] == "RetainExceptOnCreate", (concern, type_)


def test_access_log_bucket_is_versioned(env, templates):
    buckets = templates[(env, "storage")].find_resources("AWS::S3::Bucket").values()
    assert all(b["Properties"].get("VersioningConfiguration") == {"Status": "Enabled"} for b in buckets)


def test_termination_protection_follows_the_configuration(env, synthesized):
    config = synthesized[env].config
    for stack in synthesized[env].stacks:
        assert stack.termination_protection is config.termination_protection


def test_prod_is_at_least_as_strict_as_every_other_environment(env, synthesized):
    prod = synthesized["prod"].config if "prod" in synthesized else None
    if prod is None:
        pytest.skip("no prod environment configured")
    config = synthesized[env].config
    for flag in ("termination_protection", "endpoint_policies", "vpc_endpoint_only_bucket_access"):
        assert getattr(prod, flag) or not getattr(config, flag), flag
    assert prod.removal_policy == "retain"


def test_every_stack_carries_its_environment_tag(env, synthesized):
    for stack in synthesized[env].stacks:
        assert stack.tags.tag_values()["loraops:environment"] == env
    assert len(synthesized[env].stacks) == len(CONCERNS)


def _bucket_statements(templates, env) -> dict[str, dict]:
    policies = templates[(env, "storage")].find_resources("AWS::S3::BucketPolicy").values()
    return {s["Sid"]: s for p in policies for s in p["Properties"]["PolicyDocument"]["Statement"] if "Sid" in s}


def _resources(statement) -> list[str]:
    resources = statement["Resource"]
    return [json.dumps(r) for r in (resources if isinstance(resources, list) else [resources])]


def test_base_versions_are_written_once_whoever_writes(env, templates):
    """Every principal: an object under base/ is only created with If-None-Match (S3 refuses to replace a key)."""
    deny = _bucket_statements(templates, env)["WriteOnceVersions"]
    assert deny["Effect"] == "Deny" and deny["Principal"] == {"AWS": "*"} and deny["Action"] == "s3:PutObject"
    assert deny["Condition"] == {"Null": {"s3:if-none-match": "true"}, "Bool": {"s3:ObjectCreationOperation": "true"}}
    assert all("/base/*" in r for r in _resources(deny))


def test_what_registered_packages_point_at_is_never_deleted(env, templates, synthesized):
    deny = _bucket_statements(templates, env)["NeverDeleteRegisteredArtifacts"]
    assert deny["Effect"] == "Deny" and deny["Principal"] == {"AWS": "*"}
    assert sorted(deny["Action"]) == ["s3:DeleteObject", "s3:DeleteObjectVersion"]
    assert sorted(r.split("/")[-2] for r in _resources(deny)) == ["adapters", "base", "merged"]
    if synthesized[env].config.removal_policy == "destroy":  # only CDK's teardown provider empties the bucket
        assert "CustomS3AutoDeleteObjects" in json.dumps(deny["Condition"]["ArnNotLike"]["aws:PrincipalArn"])
    else:
        assert "Condition" not in deny


def test_the_execution_role_cannot_delete_registered_outputs_nor_change_serving(env, templates):
    statements = _statements(templates, env)
    allowed = [
        (a, r) for s in statements.values() if s["Effect"] == "Allow" for a in _actions(s) for r in _resources(s)
    ]
    assert not [
        r for a, r in allowed if a == "s3:DeleteObject" and any(f"/{p}" in r for p in s3_layout.REGISTERED_PREFIXES)
    ]
    serving = {
        "sagemaker:CreateEndpoint",
        "sagemaker:UpdateEndpoint",
        "sagemaker:CreateInferenceComponent",
        "sagemaker:UpdateInferenceComponent",
        "sagemaker:CreateEndpointConfig",
        "sagemaker:CreateModel",
    }
    assert not serving & {a for a, _ in allowed}
    deny = statements["DenyServingChanges"]
    assert deny["Effect"] == "Deny" and deny["Resource"] == "*" and serving <= set(_actions(deny))


def test_registered_fine_tune_versions_are_written_once_and_never_deleted(env, templates, synthesized):
    """finetuned/ (what a fine-tune package points at once registered): every principal creates an object there only
    with If-None-Match, and none deletes one (CDK's teardown provider of a destroy environment aside)."""
    statements = _bucket_statements(templates, env)
    write = statements["WriteOnceFineTuneVersions"]
    assert write["Effect"] == "Deny" and write["Principal"] == {"AWS": "*"} and write["Action"] == "s3:PutObject"
    assert write["Condition"] == {"Null": {"s3:if-none-match": "true"}, "Bool": {"s3:ObjectCreationOperation": "true"}}
    assert [r.split("/")[-2] for r in _resources(write)] == ["finetuned"]
    delete = statements["NeverDeleteFineTuneVersions"]
    assert delete["Effect"] == "Deny" and delete["Principal"] == {"AWS": "*"}
    assert sorted(delete["Action"]) == ["s3:DeleteObject", "s3:DeleteObjectVersion"]
    assert [r.split("/")[-2] for r in _resources(delete)] == ["finetuned"]
    if synthesized[env].config.removal_policy == "destroy":
        assert "CustomS3AutoDeleteObjects" in json.dumps(delete["Condition"]["ArnNotLike"]["aws:PrincipalArn"])
    else:
        assert "Condition" not in delete
    # the execution role (jobs, Studio, endpoints) reads them and writes none; endpoints load models from there
    role = _statements(templates, env)
    writes = [
        r for s in role.values() if s["Effect"] == "Allow" and "s3:PutObject" in _actions(s) for r in _resources(s)
    ]
    reads = [
        r for s in role.values() if s["Effect"] == "Allow" and "s3:GetObject" in _actions(s) for r in _resources(s)
    ]
    assert not [r for r in writes if f"/{s3_layout.FINETUNED}" in r]
    assert [r for r in reads if f"/{s3_layout.FINETUNED}" in r]
