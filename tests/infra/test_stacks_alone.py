"""Each stack builds alone from hand-made props: no cdk.json, no other environment synthesized, no EnvironmentConfig.

The stacks' behaviour in every configured environment is asserted elsewhere (on the shared synthesized app); here
the point is the narrow input: what a stack is given is all it reads."""

from __future__ import annotations

import aws_cdk as cdk
import pytest
from aws_cdk import aws_ec2 as ec2
from aws_cdk import aws_kms as kms
from aws_cdk.assertions import Match, Template

from infra.config_sections import FineTunedLine, ServingConfig
from infra.nag import apply_gate
from infra.props import Placement, PromotionProps
from infra.registration.props import RegistrationProps
from infra.stacks.registration import RegistrationStack
from infra.stacks.registry import RegistryProps, RegistryStack
from loraops.naming import OutputMode, base_group_name

ENV = cdk.Environment(account="111111111111", region="us-east-1")
BASE_MODEL = "meta-llama/Llama-2-7b-hf"
BASICS = dict(name="solo", prefix="loraops-solo", region="us-east-1", removal_policy="destroy", log_retention_days=7)
BUCKET = "loraops-solo-artifacts-111111111111-us-east-1"
MERGED = FineTunedLine(mode=OutputMode.MERGED, dataset="dolly")
ADAPTER = FineTunedLine(mode=OutputMode.ADAPTER, dataset="dolly", task="chat")
LINES = (MERGED, ADAPTER)
GROUPS = (base_group_name(BASE_MODEL), *(line.group_name(BASE_MODEL) for line in LINES))
PROMOTION = PromotionProps(region="us-east-1", artifact_bucket_name=BUCKET, groups=GROUPS)
#: Partition "aws" resolved at synth (as cdk.json asks), so policy ARNs are literals nag findings can name.
CONTEXT = {"@aws-cdk/core:enablePartitionLiterals": True}


def _registry_props(**changes) -> RegistryProps:
    return RegistryProps(
        **BASICS,
        base_model_id=BASE_MODEL,
        base_group=GROUPS[0],
        fine_tuned_lines=LINES,
        approval="manual",
        approvers=("arn:aws:iam::111111111111:role/reviewer",),
        artifact_bucket_name=BUCKET,
        promotion=PROMOTION,
        **changes,
    )


def _registration_props(serving: ServingConfig | None) -> RegistrationProps:
    return RegistrationProps(
        **BASICS,
        artifact_bucket_name=BUCKET,
        approval="auto",
        auto_approve=True,
        base_model_id=BASE_MODEL,
        fine_tuned_lines=LINES,
        base_import_sources=(),
        hub_token_secret_arn=None,
        import_base_role_name="loraops-solo-import-base",
        promote_role_name="loraops-solo-promote",
        execution_role_name="loraops-solo-sagemaker-execution",
        allowed_instance_types=("ml.g5.2xlarge",),
        serving=serving,
        serving_instance_type="ml.g5.2xlarge",
        promotion=PROMOTION,
    )


def test_registry_stack_alone_passes_the_nag_gate_with_one_group_per_line():
    app = cdk.App(context=CONTEXT)
    stack = RegistryStack(app, "solo-registry", props=_registry_props(), env=ENV)
    apply_gate(app)
    app.synth()  # raises on any cdk-nag finding
    template = Template.from_stack(stack)
    names = {
        g["Properties"]["ModelPackageGroupName"]
        for g in template.find_resources("AWS::SageMaker::ModelPackageGroup").values()
    }
    assert names == set(GROUPS)
    template.has_resource_properties("AWS::IAM::Role", {"RoleName": "loraops-solo-model-approver"})


def test_registry_without_approvers_has_no_approver_role():
    app = cdk.App(context=CONTEXT)
    template = Template.from_stack(
        RegistryStack(app, "solo-registry", props=_registry_props_without_approvers(), env=ENV)
    )
    assert template.find_resources("AWS::IAM::Role") == {}


def _registry_props_without_approvers() -> RegistryProps:
    props = _registry_props()
    return RegistryProps(**{**props.__dict__, "approvers": ()})


@pytest.fixture
def infrastructure():
    """The artifact key and a VPC placement, in a stack of their own (what storage and network give the others)."""
    app = cdk.App(context=CONTEXT)
    base = cdk.Stack(app, "solo-base", env=ENV)
    key = kms.Key(base, "Key")
    vpc = ec2.Vpc(
        base,
        "Vpc",
        availability_zones=["us-east-1a", "us-east-1b"],
        nat_gateways=0,
        subnet_configuration=[ec2.SubnetConfiguration(name="isolated", subnet_type=ec2.SubnetType.PRIVATE_ISOLATED)],
    )
    group = ec2.SecurityGroup(base, "Workloads", vpc=vpc)
    return app, key, Placement(vpc=vpc, subnets=vpc.isolated_subnets, security_group=group)


@pytest.mark.parametrize("serving", [None, ServingConfig()], ids=["registration-only", "with-serving"])
def test_registration_stack_alone_has_deploy_on_approval_only_where_serving_is_given(infrastructure, serving):
    app, key, placement = infrastructure
    stack = RegistrationStack(
        app,
        f"solo-registration-{'serving' if serving else 'plain'}",
        props=_registration_props(serving),
        key=key,
        placement=placement,
        env=ENV,
    )
    template = Template.from_stack(stack)
    names = {f["Properties"]["FunctionName"] for f in template.find_resources("AWS::Lambda::Function").values()}
    expected = {"loraops-solo-register-finetune", "loraops-solo-register-base", "loraops-solo-import-base"}
    assert names == (expected | {"loraops-solo-deploy-on-approval"} if serving else expected)
    buffers = template.find_resources(
        "AWS::SQS::Queue", {"Properties": {"FifoQueue": True, "VisibilityTimeout": Match.any_value()}}
    )
    assert len(buffers) == (1 if serving else 0)
    # every function alarms on its errors, named from the props' prefix
    alarm_names = {a["Properties"]["AlarmName"] for a in template.find_resources("AWS::CloudWatch::Alarm").values()}
    assert {f"{name}-errors" for name in names} <= alarm_names
