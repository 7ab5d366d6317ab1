"""Registry resources: collections in the SDK's format, approval that holds, names that survive change."""

from __future__ import annotations

import json

import pytest

from infra.config import ConfigError, load_environments
from loraops.collections import Hierarchy, path_id
from loraops.naming import OutputMode
from tests.infra.conftest import ENVIRONMENTS


def _collections(templates, env) -> dict[str, dict]:
    groups = templates[(env, "registry")].find_resources("AWS::ResourceGroups::Group").values()
    return {g["Properties"]["Name"]: g for g in groups}


def _tags(resource) -> dict[str, str]:
    return {t["Key"]: t["Value"] for t in resource["Properties"]["Tags"]}


@pytest.mark.parametrize("env", ENVIRONMENTS)
def test_collections_are_resource_groups_in_the_sdks_format(env, templates, synthesized):
    """Root: sagemaker:collection + collection-path:root; child: its parent's path tag; both: a TAG_FILTERS_1_0
    query over model package groups and groups on one sagemaker:collection-path:<id> tag (sagemaker/collection.py)."""
    base = synthesized[env].config.base_group
    collections = _collections(templates, env)
    assert set(collections) == {base, f"{base}-adapters", f"{base}-merged"}
    root = collections[base]
    assert _tags(root)["sagemaker:collection"] == "true" and _tags(root)["sagemaker:collection-path:root"] == "true"
    root_key = f"sagemaker:collection-path:{path_id(base)}"
    for name, group in collections.items():
        query = group["Properties"]["ResourceQuery"]
        assert query["Type"] == "TAG_FILTERS_1_0"
        assert query["Query"]["ResourceTypeFilters"] == [
            "AWS::SageMaker::ModelPackageGroup",
            "AWS::ResourceGroups::Group",
        ]
        (tag_filter,) = query["Query"]["TagFilters"]
        assert (
            tag_filter["Key"].startswith("sagemaker:collection-path:") and len(tag_filter["Key"].split(":")[-1]) == 13
        )
        if name != base:
            # the SDK's Collection.create: a child's path is "<parent path>/<child collection name>"
            assert tag_filter["Values"] == [f"{base}/{name}"]
            assert _tags(group)[root_key] == base and _tags(group)["sagemaker:collection"] == "true"
            assert "sagemaker:collection-path:root" not in _tags(group)


@pytest.mark.parametrize("env", ENVIRONMENTS)
def test_every_package_group_is_in_its_collection(env, templates, synthesized):
    config = synthesized[env].config
    hierarchy = Hierarchy.for_base(config.base_group)
    groups = {
        g["Properties"]["ModelPackageGroupName"]: g
        for g in templates[(env, "registry")].find_resources("AWS::SageMaker::ModelPackageGroup").values()
    }
    assert _tags(groups[config.base_group]).items() >= hierarchy.root.member_tag().items()
    for line in config.fine_tuned_lines:
        group = groups[line.group_name(config.base_model_id)]
        assert _tags(group).items() >= hierarchy.collection_for(line.mode).member_tag().items()
        # create-only descriptions say only what the name says: an adapter line's dataset lives in a tag
        if line.mode is OutputMode.ADAPTER:
            assert line.dataset not in group["Properties"]["ModelPackageGroupDescription"]
            assert _tags(group)["sourceDataset"] == line.dataset


@pytest.mark.parametrize("env", ENVIRONMENTS)
def test_registry_resources_are_retained_where_data_is(env, templates, synthesized):
    expected = "Delete" if synthesized[env].config.removal_policy == "destroy" else "RetainExceptOnCreate"
    t = templates[(env, "registry")]
    for type_ in ("AWS::SageMaker::ModelPackageGroup", "AWS::ResourceGroups::Group"):
        assert {r["DeletionPolicy"] for r in t.find_resources(type_).values()} == {expected}


def _policy(templates, env) -> dict[str, dict]:
    (policy,) = templates[(env, "studio")].find_resources("AWS::IAM::Policy").values()
    return {s["Sid"]: s for s in policy["Properties"]["PolicyDocument"]["Statement"]}


@pytest.mark.parametrize("env", ENVIRONMENTS)
def test_manual_approval_holds_against_the_execution_role(env, templates, synthesized):
    statements = _policy(templates, env)
    tags = statements["DenyChangingPolicyTags"]
    assert tags["Effect"] == "Deny" and sorted(tags["Action"]) == ["sagemaker:AddTags", "sagemaker:DeleteTags"]
    assert tags["Condition"] == {"ForAnyValue:StringLike": {"aws:TagKeys": ["loraops:*"]}}
    if synthesized[env].config.auto_approve:
        assert "DenySelfApproval" not in statements
        return
    deny = statements["DenySelfApproval"]
    assert deny["Effect"] == "Deny" and deny["Resource"] == "*"
    assert sorted(deny["Action"]) == ["sagemaker:CreateModelPackage", "sagemaker:UpdateModelPackage"]
    assert deny["Condition"] == {"StringEquals": {"sagemaker:ModelApprovalStatus": "Approved"}}


def test_approver_role_may_approve_only_this_environments_packages(cdk_context):
    """With approvers configured, one role assumable by exactly them may update the environment's packages."""
    from aws_cdk.assertions import Template

    from infra.app_factory import build_app

    approver = "arn:aws:iam::222222222222:role/release-managers"
    cdk_context["loraops:environments"]["staging"]["approvers"] = [approver]
    cdk_context["env"] = "staging"
    app, (staging,) = build_app(context=cdk_context)
    app.synth()
    t = Template.from_stack(staging.registry)
    (role,) = t.find_resources("AWS::IAM::Role").values()
    assert role["Properties"]["RoleName"] == "loraops-staging-model-approver"
    (principal,) = [s["Principal"] for s in role["Properties"]["AssumeRolePolicyDocument"]["Statement"]]
    assert principal == {"AWS": approver}
    (policy,) = t.find_resources("AWS::IAM::Policy").values()
    update = next(
        s for s in policy["Properties"]["PolicyDocument"]["Statement"] if "sagemaker:UpdateModelPackage" in s["Action"]
    )
    groups = [
        staging.config.base_group,
        *(line.group_name(staging.config.base_model_id) for line in staging.config.fine_tuned_lines),
    ]
    assert sorted(update["Resource"]) == sorted(
        f"arn:aws:sagemaker:us-east-1:222222222222:model-package/{g}/*" for g in groups
    )
    # what Registry.decide reads before it decides: the group's environment tag and the bucket's
    allowed = {
        action: statement["Resource"]
        for statement in policy["Properties"]["PolicyDocument"]["Statement"]
        for action in ([statement["Action"]] if isinstance(statement["Action"], str) else statement["Action"])
    }
    assert sorted(allowed["sagemaker:ListTags"]) == sorted(
        f"arn:aws:sagemaker:us-east-1:222222222222:model-package-group/{g}" for g in groups
    )
    assert allowed["s3:GetBucketTagging"] == f"arn:aws:s3:::{staging.config.artifact_bucket_name}"


def test_an_approver_role_exactly_where_approvers_are_configured(templates, synthesized):
    for env in ENVIRONMENTS:
        roles = templates[(env, "registry")].find_resources("AWS::IAM::Role")
        assert len(roles) == (1 if synthesized[env].config.approvers else 0), env


def test_two_environments_in_one_account_and_region_are_refused(context_copy):
    environments = context_copy["loraops:environments"]
    environments["qa"] = json.loads(json.dumps(environments["staging"]))
    with pytest.raises(
        ConfigError,
        match="environments 'staging' and 'qa' share account 222222222222 and region "
        "us-east-1; their model package groups and collections would collide",
    ):
        load_environments(context_copy, selected="qa")
