"""Promotion's grants in the synthesized templates (issue #21): staging lets prod's promote role read its registered
prefixes and describe its packages, nothing else; prod runs the promote function and its VPC-only bucket Deny exempts
exactly the roles it names; operators upload datasets to prod with a role that reaches datasets/ only."""

from __future__ import annotations

import json

import pytest

from infra.config import CONTEXT_KEY, ConfigError, load_environments
from tests.infra.conftest import ENVIRONMENTS

PREFIXES = ("base", "finetuned")


def _bucket_statements(template) -> list[dict]:
    return [
        s
        for p in template.find_resources("AWS::S3::BucketPolicy").values()
        for s in p["Properties"]["PolicyDocument"]["Statement"]
    ]


def _key_statements(template) -> list[dict]:
    (key,) = template.find_resources("AWS::KMS::Key").values()
    return key["Properties"]["KeyPolicy"]["Statement"]


def _suffix(resource) -> str:
    """``{"Fn::Join": ["", [<bucket GetAtt>, "/base/*"]]}`` -> ``/base/*``."""
    return resource["Fn::Join"][1][-1] if isinstance(resource, dict) else resource


def _promote_role(config) -> str:
    return f"arn:aws:iam::{config.account}:role/loraops-{config.name}-promote"


@pytest.fixture(scope="module")
def staging_and_prod(synthesized):
    configs = {name: env.config for name, env in synthesized.items()}
    assert configs["prod"].promotion_source.name == "staging"  # cdk.json: prod promotes from staging
    return configs["staging"], configs["prod"]


def test_staging_grants_prods_promote_role_read_of_the_registered_prefixes_only(templates, staging_and_prod):
    staging, prod = staging_and_prod
    storage = templates[("staging", "storage")]
    named = {"ArnEquals": {"aws:PrincipalArn": [_promote_role(prod)]}}
    grants = {s["Sid"]: s for s in _bucket_statements(storage) if s.get("Sid", "").startswith("Promotion")}
    assert set(grants) == {"PromotionReadsRegisteredPrefixes", "PromotionListsRegisteredPrefixes"}
    for statement in grants.values():
        assert statement["Effect"] == "Allow"
        assert statement["Principal"] == {"AWS": f"arn:aws:iam::{prod.account}:root"}
    read, listing = grants["PromotionReadsRegisteredPrefixes"], grants["PromotionListsRegisteredPrefixes"]
    assert read["Condition"] == named and sorted(read["Action"]) == ["s3:GetObject", "s3:GetObjectVersion"]
    assert sorted(_suffix(r) for r in read["Resource"]) == [f"/{p}/*" for p in PREFIXES]
    assert listing["Action"] == "s3:ListBucket"
    assert listing["Condition"] == {**named, "StringLike": {"s3:prefix": ["base/*", "finetuned/*"]}}
    (decrypt,) = [s for s in _key_statements(storage) if s.get("Sid") == "PromotionDecryptsThroughS3"]
    assert decrypt["Action"] == "kms:Decrypt" and decrypt["Principal"] == read["Principal"]
    assert decrypt["Condition"] == {
        **named,
        "StringEquals": {
            "kms:ViaService": f"s3.{staging.region}.amazonaws.com",
            "kms:EncryptionContext:aws:s3:arn": f"arn:aws:s3:::{staging.artifact_bucket_name}",
        },
    }
    # nothing else in staging's storage names prod's account
    others = [s for s in _bucket_statements(storage) + _key_statements(storage) if s not in [*grants.values(), decrypt]]
    assert prod.account not in json.dumps(others)


def test_staging_groups_let_prods_promote_role_describe_their_packages_only(templates, staging_and_prod):
    staging, prod = staging_and_prod
    groups = templates[("staging", "registry")].find_resources("AWS::SageMaker::ModelPackageGroup").values()
    assert groups
    for group in groups:
        name = group["Properties"]["ModelPackageGroupName"]
        (statement,) = group["Properties"]["ModelPackageGroupPolicy"]["Statement"]
        assert statement["Action"] == "sagemaker:DescribeModelPackage"
        assert statement["Resource"] == f"arn:aws:sagemaker:{staging.region}:{staging.account}:model-package/{name}/*"
        assert statement["Condition"] == {"ArnEquals": {"aws:PrincipalArn": [_promote_role(prod)]}}


@pytest.mark.parametrize("env", ENVIRONMENTS)
def test_an_environment_nobody_promotes_from_grants_nothing(env, templates, synthesized):
    config = synthesized[env].config
    if config.promotion_targets:
        pytest.skip(f"{env} is a promotion source")
    storage = templates[(env, "storage")]
    assert not [s for s in _bucket_statements(storage) + _key_statements(storage) if "Promotion" in s.get("Sid", "")]
    groups = templates[(env, "registry")].find_resources("AWS::SageMaker::ModelPackageGroup").values()
    assert all("ModelPackageGroupPolicy" not in g["Properties"] for g in groups)


def _function(templates, env: str, name: str) -> dict:
    functions = templates[(env, "registration")].find_resources("AWS::Lambda::Function").values()
    (function,) = [f["Properties"] for f in functions if f["Properties"]["FunctionName"] == name]
    return function


def _role_names(templates, env: str, concern: str) -> set[str]:
    roles = templates[(env, concern)].find_resources("AWS::IAM::Role").values()
    return {r["Properties"].get("RoleName") for r in roles}


def _policy(templates, env: str, concern: str, prefix: str) -> dict[str, dict]:
    policies = templates[(env, concern)].find_resources("AWS::IAM::Policy")
    (policy,) = [p for logical_id, p in policies.items() if logical_id.startswith(prefix)]
    return {s["Sid"]: s for s in policy["Properties"]["PolicyDocument"]["Statement"]}


def test_prod_runs_the_promote_function_outside_the_vpc_with_narrow_grants(templates, staging_and_prod):
    staging, prod = staging_and_prod
    function = _function(templates, "prod", "loraops-prod-promote")
    assert "VpcConfig" not in function and function["Timeout"] == 900
    variables = function["Environment"]["Variables"]
    assert variables["SOURCE_BUCKET"] == staging.artifact_bucket_name
    assert (variables["SOURCE_ENVIRONMENT"], variables["SOURCE_ACCOUNT"], variables["SOURCE_REGION"]) == (
        "staging",
        staging.account,
        staging.region,
    )
    assert variables["APPROVAL"] == "manual"
    assert "loraops-prod-promote" in _role_names(templates, "prod", "registration")
    statements = _policy(templates, "prod", "registration", "PromotePolicy")
    source, own = f"arn:aws:s3:::{staging.artifact_bucket_name}", f"arn:aws:s3:::{prod.artifact_bucket_name}"
    assert sorted(statements["ReadPromotionSource"]["Resource"]) == [f"{source}/{p}/*" for p in PREFIXES]
    assert sorted(statements["WritePromotedArtifacts"]["Resource"]) == [f"{own}/{p}/*" for p in PREFIXES]
    assert "s3:DeleteObject" not in json.dumps(statements["WritePromotedArtifacts"])
    assert statements["DecryptPromotionSource"]["Condition"] == {
        "StringEquals": {
            "kms:ViaService": f"s3.{staging.region}.amazonaws.com",
            "kms:EncryptionContext:aws:s3:arn": source,
        }
    }
    described = statements["DescribeSourcePackages"]
    assert described["Action"] == "sagemaker:DescribeModelPackage"
    assert all(r.startswith(f"arn:aws:sagemaker:{staging.region}:{staging.account}:") for r in described["Resource"])
    assert "DenySelfApproval" in statements  # prod is manual: it registers PendingManualApproval, never Approved
    for env in ENVIRONMENTS:
        if env != "prod":
            assert not [
                f
                for f in templates[(env, "registration")].find_resources("AWS::Lambda::Function").values()
                if f["Properties"]["FunctionName"].endswith("-promote")
            ]


def test_prods_vpc_only_deny_exempts_exactly_the_roles_it_names(templates, staging_and_prod):
    _, prod = staging_and_prod
    (deny,) = [
        s
        for s in _bucket_statements(templates[("prod", "storage")])
        if s.get("Sid") == "ObjectsOnlyThroughTheVpcEndpoint"
    ]
    names = ("sagemaker-execution", "import-base", "dataset-upload", "promote")
    exempt = [f"arn:aws:iam::{prod.account}:role/loraops-prod-{n}" for n in names]
    assert deny["Condition"]["ArnNotEquals"] == {"aws:PrincipalArn": exempt}
    # the roles carry those names
    assert "loraops-prod-import-base" in _role_names(templates, "prod", "registration")
    assert "loraops-prod-dataset-upload" in _role_names(templates, "prod", "storage")


def test_operators_upload_datasets_to_prod_with_a_role_that_reaches_datasets_only(
    templates, synthesized, staging_and_prod
):
    _, prod = staging_and_prod
    roles = templates[("prod", "storage")].find_resources("AWS::IAM::Role").values()
    (role,) = [r["Properties"] for r in roles if r["Properties"].get("RoleName") == "loraops-prod-dataset-upload"]
    (trust,) = role["AssumeRolePolicyDocument"]["Statement"]
    assert trust["Principal"] == {"AWS": f"arn:aws:iam::{prod.account}:root"}  # the account's IAM says who
    statements = _policy(templates, "prod", "storage", "DatasetUploadPolicy")
    bucket = f"arn:aws:s3:::{prod.artifact_bucket_name}"
    assert statements["UploadDatasets"]["Resource"] == f"{bucket}/datasets/*"
    assert sorted(statements["UploadDatasets"]["Action"]) == ["s3:AbortMultipartUpload", "s3:PutObject"]
    assert statements["ListDatasets"]["Condition"] == {"StringLike": {"s3:prefix": ["datasets/*"]}}
    assert set(statements) == {"UploadDatasets", "ListDatasets", "EncryptDatasets"}
    for env in ENVIRONMENTS:  # the other environments' buckets admit their operators directly
        if not synthesized[env].config.vpc_endpoint_only_bucket_access:
            assert f"loraops-{env}-dataset-upload" not in _role_names(templates, env, "storage")


def test_promote_from_is_resolved_both_ways_also_when_one_environment_is_selected(context_copy):
    (staging,) = load_environments(context_copy, "staging")
    assert [(t.name, t.promote_role_name) for t in staging.promotion_targets] == [("prod", "loraops-prod-promote")]
    (prod,) = load_environments(context_copy, "prod")
    assert prod.promotion_source.artifact_bucket_name == "loraops-staging-artifacts-222222222222-us-east-1"


@pytest.mark.parametrize("source", ["prod", "qa"])
def test_promote_from_must_name_another_environment(context_copy, source):
    context_copy[CONTEXT_KEY]["prod"]["promote_from"] = source
    with pytest.raises(ConfigError, match=rf"{CONTEXT_KEY}\.prod\.promote_from: '{source}' is not another environment"):
        load_environments(context_copy)
