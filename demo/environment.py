"""One loraops environment inside the emulator, made from the CDK app's synthesized templates (not a second copy):
the artifact bucket, the model package groups with their tags, the collections, the registration functions'
idempotency table and the fine-tune state machine.

The demo environment is ``dev`` from ``cdk.json`` with two changes, both stated where they are made: the base model
is the demo's stand-in (its groups get its names) and approval is ``manual`` (so approval is shown).
"""

from __future__ import annotations

import json
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from infra.app_factory import build_app
from infra.config import CONTEXT_KEY
from infra.environment_config import EnvironmentConfig
from infra.stacks.workflow import workflow_parameter

ROOT = Path(__file__).resolve().parents[1]
ENVIRONMENT = "dev"
#: What a cross-stack value (subnets, the key, the trainer image) becomes: the emulator checks none of them.
STAND_IN = "demo-stand-in"


@dataclass(frozen=True)
class DemoEnvironment:
    config: EnvironmentConfig
    templates: dict[str, dict[str, Any]]  # concern -> template
    workflow_arn: str = ""

    @property
    def bucket(self) -> str:
        return self.config.artifact_bucket_name

    def resources(self, concern: str, type_: str) -> list[dict[str, Any]]:
        template = self.templates[concern]
        return [r["Properties"] for r in template["Resources"].values() if r["Type"] == type_]

    @property
    def idempotency_table(self) -> str:
        (table,) = self.resources("registration", "AWS::DynamoDB::Table")
        return table["TableName"]


def synthesize(model_id: str) -> DemoEnvironment:
    """``dev`` with the stand-in base and manual approval, synthesized through the nag gate like ``make synth``."""
    context = json.loads((ROOT / "cdk.json").read_text())["context"]
    dev = context[CONTEXT_KEY][ENVIRONMENT]
    dev["base_model_id"] = model_id  # the stand-in's own groups and collections, named by the same code
    dev["approval"] = "manual"  # registration leaves packages pending; `loraops models approve` decides
    # a manual environment names who may approve (synth refuses it otherwise): here the emulated account itself
    dev["approvers"] = [f"arn:aws:iam::{dev['account']}:root"]
    context["env"] = ENVIRONMENT
    with tempfile.TemporaryDirectory(prefix="loraops-demo-cdk-") as outdir:
        app, (stacks,) = build_app(context=context, outdir=outdir)
        assembly = app.synth()
        templates = {
            concern: assembly.get_stack_by_name(f"{stacks.config.prefix}-{concern}").template
            for concern in ("registry", "registration", "workflow")
        }
    return DemoEnvironment(stacks.config, templates)


def create_in(aws: Any, environment: DemoEnvironment) -> DemoEnvironment:
    """Create the environment's registry resources in the emulator, each from its synthesized properties."""
    aws.client("s3").create_bucket(Bucket=environment.bucket)
    sagemaker = aws.client("sagemaker")
    for group in environment.resources("registry", "AWS::SageMaker::ModelPackageGroup"):
        sagemaker.create_model_package_group(
            ModelPackageGroupName=group["ModelPackageGroupName"],
            ModelPackageGroupDescription=group.get("ModelPackageGroupDescription", ""),
            Tags=group.get("Tags", []),
        )
    groups = aws.client("resource-groups")
    for collection in environment.resources("registry", "AWS::ResourceGroups::Group"):
        query = collection["ResourceQuery"]
        groups.create_group(
            Name=collection["Name"],
            Description=collection.get("Description", ""),
            ResourceQuery={"Type": query["Type"], "Query": json.dumps(query["Query"])},
            Tags={t["Key"]: t["Value"] for t in collection.get("Tags", [])},
        )
    (table,) = environment.resources("registration", "AWS::DynamoDB::Table")
    aws.client("dynamodb").create_table(
        TableName=table["TableName"],
        KeySchema=table["KeySchema"],
        AttributeDefinitions=table["AttributeDefinitions"],
        BillingMode="PAY_PER_REQUEST",
    )
    return DemoEnvironment(environment.config, environment.templates, _create_workflow(aws, environment))


def _create_workflow(aws: Any, environment: DemoEnvironment) -> str:
    """The fine-tune state machine, its definition taken from the workflow template."""
    (machine,) = environment.resources("workflow", "AWS::StepFunctions::StateMachine")
    definition = resolve(machine["DefinitionString"])
    arn = aws.client("stepfunctions").create_state_machine(
        name=machine.get("StateMachineName", f"{environment.config.prefix}-finetune"),
        definition=definition,
        roleArn=f"arn:aws:iam::{environment.config.account}:role/{environment.config.prefix}-workflow",
    )["stateMachineArn"]
    aws.client("ssm").put_parameter(
        Name=workflow_parameter(environment.config.prefix), Value=arn, Type="String", Overwrite=True
    )
    return arn


def resolve(value: Any) -> str:
    """A CloudFormation string value with its intrinsic functions resolved for the emulator: ``Fn::Join`` joined,
    ``Fn::Sub`` and references to other stacks' values (``Ref``, ``Fn::ImportValue``, ``Fn::GetAtt``) given a
    stand-in (the emulator checks none of them)."""
    if isinstance(value, str):
        return value
    if isinstance(value, dict) and "Fn::Join" in value:
        separator, parts = value["Fn::Join"]
        return separator.join(resolve(part) for part in parts)
    if (
        isinstance(value, dict)
        and len(value) == 1
        and next(iter(value))
        in (
            "Ref",
            "Fn::ImportValue",
            "Fn::GetAtt",
            "Fn::Sub",
            "Fn::Select",
        )
    ):
        return STAND_IN
    raise ValueError(f"no stand-in for {json.dumps(value)[:200]}")
