"""What a synthesized template must become before moto's CloudFormation can create it.

Two generic rules, by resource type (never by logical id), each recorded so the report can say what changed:

- **Stand-ins.** moto skips a type it does not implement without an error (``parsing.parse_resource`` returns None):
  every ``Ref``/``Fn::GetAtt`` to it then resolves to nothing and properties silently disappear. Each such resource
  (and every ``Custom::*`` resource, which moto can only create by invoking its Lambda function in Docker) becomes an
  ``AWS::SSM::Parameter`` under the same logical id (``DependsOn`` on it still holds) whose value records the type it
  stands in for. References to it become literal placeholder values (``placeholder``), so what reads them still gets
  a string.
- **moto workarounds.** The smallest property change that avoids a known moto 5.2.5 bug; ``WORKAROUNDS`` lists each
  with the bug's cause in moto's source.
"""

from __future__ import annotations

import copy
import json
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

STANDIN_TYPE = "AWS::SSM::Parameter"
#: Resource types moto "creates" as nothing (``parsing.NULL_MODELS``): their references resolve to nothing as well.
NULL_TYPES = frozenset({"AWS::CloudFormation::WaitCondition", "AWS::CloudFormation::WaitConditionHandle"})
CUSTOM_RESOURCE = "AWS::CloudFormation::CustomResource"


def emulated_types() -> frozenset[str]:
    """The resource types moto's CloudFormation creates (its ``CloudFormationModel`` subclasses), less the custom
    resource model, which needs a Lambda invocation (Docker) to complete."""
    from moto.cloudformation.parsing import get_model_map

    return frozenset(get_model_map()) - NULL_TYPES - {CUSTOM_RESOURCE}


def needs_standin(resource_type: str, emulated: frozenset[str]) -> bool:
    return resource_type.startswith("Custom::") or resource_type not in emulated


@dataclass(frozen=True)
class Workaround:
    """A property change for one resource type that avoids a moto bug (``cause``: where in moto and why)."""

    resource_type: str
    change: str
    cause: str
    apply: Callable[[dict[str, Any], dict[str, Any]], bool]  # (resource, all resources): mutates resource, True
    # when it changed something


def _kms_tag_keys(resource: dict[str, Any], _: dict[str, Any]) -> bool:
    properties = resource["Properties"]
    tags = properties.get("Tags")
    if not tags:
        return False
    properties["Tags"] = [{"TagKey": tag["Key"], "TagValue": tag["Value"]} for tag in tags]
    return True


def _kms_policy_text(resource: dict[str, Any], _: dict[str, Any]) -> bool:
    properties = resource["Properties"]
    if not isinstance(properties.get("KeyPolicy"), dict):
        return False
    properties["KeyPolicy"] = {"Fn::ToJsonString": properties["KeyPolicy"]}  # resolved inside, then serialized
    return True


def _ssm_tag_list(resource: dict[str, Any], _: dict[str, Any]) -> bool:
    properties = resource["Properties"]
    tags = properties.get("Tags")
    if not isinstance(tags, dict) or not tags:
        return False
    properties["Tags"] = [{"Key": key, "Value": value} for key, value in tags.items()]
    return True


#: An instance type moto's endpoint-config validation accepts, with a GPU like the types it lacks.
ACCEPTED_INSTANCE_TYPE = "ml.g4dn.2xlarge"


def _moto_accepts_instance_type(instance_type: str) -> bool:
    from moto.sagemaker.exceptions import ValidationError
    from moto.sagemaker.models import FakeEndpointConfig

    try:
        FakeEndpointConfig.validate_instance_type(None, instance_type)  # type: ignore[arg-type]  # self unused
    except ValidationError:
        return False
    return True


def _endpoint_instance_types(resource: dict[str, Any], _: dict[str, Any]) -> bool:
    changed = False
    for variant in resource["Properties"].get("ProductionVariants", []):
        instance_type = variant.get("InstanceType")
        if isinstance(instance_type, str) and not _moto_accepts_instance_type(instance_type):
            variant["InstanceType"] = ACCEPTED_INSTANCE_TYPE
            changed = True
    return changed


def _variant_model(resource: dict[str, Any], resources: dict[str, Any]) -> bool:
    variants = [v for v in resource["Properties"].get("ProductionVariants", []) if "ModelName" not in v]
    models = [lid for lid, other in resources.items() if other["Type"] == "AWS::SageMaker::Model"]
    if not variants or len(models) != 1:
        return False  # nothing to do, or no single model to name: moto's error will say what is wrong
    for variant in variants:
        variant["ModelName"] = {"Fn::GetAtt": [models[0], "ModelName"]}
    depends = resource.get("DependsOn", [])
    resource["DependsOn"] = sorted({*([depends] if isinstance(depends, str) else depends), models[0]})
    return True


def _fifo_queue_name(resource: dict[str, Any], resources: dict[str, Any]) -> bool:
    properties = resource["Properties"]
    if str(properties.get("FifoQueue")).lower() != "true" or "QueueName" in properties:
        return False
    logical_id = next(lid for lid, other in resources.items() if other is resource)
    properties["QueueName"] = {"Fn::Sub": f"${{AWS::StackName}}-{logical_id}"[:75] + ".fifo"}
    return True


WORKAROUNDS: tuple[Workaround, ...] = (
    Workaround(
        "AWS::SQS::Queue",
        "a FIFO queue without QueueName named <stack>-<logical id>.fifo (as CloudFormation names it)",
        "cloudformation/utils.py generate_resource_name gives every unnamed resource '<stack>-<id>-<suffix>', "
        "without the '.fifo' that CloudFormation appends for FIFO queues, and sqs/models.py Queue refuses it: "
        "InvalidParameterValue 'Queue name must end in .fifo for FIFO queues'",
        _fifo_queue_name,
    ),
    Workaround(
        "AWS::KMS::Key",
        "KeyPolicy written as a JSON string (Fn::ToJsonString)",
        "kms/models.py Key.create_from_cloudformation_json stores the KeyPolicy object as is, and every later "
        "KMS call on the key (kms/policy_validator.py validate_policy: json.loads(key.policy)) fails: TypeError, a 500",
        _kms_policy_text,
    ),
    Workaround(
        "AWS::SSM::Parameter",
        "Tags written as a list of {Key, Value}",
        "ssm/models.py SimpleSystemManagerBackend.put_parameter reads tags as a list ({t['Key']: t['Value'] for t "
        "in tags}); CloudFormation's AWS::SSM::Parameter Tags is a map: TypeError, a 500",
        _ssm_tag_list,
    ),
    Workaround(
        "AWS::SageMaker::EndpointConfig",
        f"a production variant's instance type moto does not list replaced by {ACCEPTED_INSTANCE_TYPE}",
        "sagemaker/models.py FakeEndpointConfig.validate_instance_type checks a fixed enum that lacks current "
        "types (g5, g6, p4d, p5...): ValidationException on a valid template",
        _endpoint_instance_types,
    ),
    Workaround(
        "AWS::SageMaker::EndpointConfig",
        "a production variant without ModelName (an inference-component endpoint) names the template's model",
        "sagemaker/models.py SageMakerModelBackend.validate_production_variants reads production_variant"
        "['ModelName'] unconditionally: KeyError, a 500",
        _variant_model,
    ),
    Workaround(
        "AWS::KMS::Key",
        "Tags written as KMS API tags (TagKey/TagValue)",
        "kms/models.py Key.create_from_cloudformation_json passes the CloudFormation Tags ({Key, Value}) to "
        "TaggingService(key_name='TagKey').tag_resource: KeyError 'TagKey', a 500 (or, when another resource "
        "reads the key first, 'Fn::GetAtt references undefined resource': ResourceMap.get makes the KeyError None)",
        _kms_tag_keys,
    ),
)


@dataclass
class Adapted:
    """A template as the emulator gets it, and what was changed to get there."""

    template: dict[str, Any]
    standins: dict[str, str] = field(default_factory=dict)  # logical id -> type stood in for
    workarounds: list[str] = field(default_factory=list)  # "<logical id> (<type>): <change>"


def placeholder(logical_id: str, resource_type: str, attribute: str | None, account: str, region: str) -> str:
    """The literal that replaces ``Ref``/``Fn::GetAtt`` to a stood-in resource: an ARN-shaped string where the value
    is an ARN (``Arn`` attributes), a name-shaped one otherwise; deterministic, and marked as a stand-in."""
    _, service, kind = resource_type.split("::") if resource_type.count("::") == 2 else ("", "custom", "resource")
    if attribute is not None and attribute.endswith("Arn"):
        return f"arn:aws:{service.lower()}:{region}:{account}:{kind.lower()}/standin-{logical_id}"
    suffix = f"-{attribute}" if attribute else ""
    return f"standin-{logical_id}{suffix}"


_SUB_VARIABLE = re.compile(r"\$\{([^}!][^}]*)\}")


Value = Callable[[str, str | None], str]


def _rewrite(node: Any, targets: dict[str, str], value: Value, shadow: frozenset[str]) -> Any:
    """``node`` with every Ref/GetAtt/Sub reference to a logical id in ``targets`` replaced by ``value(id, attr)``."""
    if isinstance(node, list):
        return [_rewrite(item, targets, value, shadow) for item in node]
    if not isinstance(node, dict):
        return node
    if len(node) == 1:
        ((key, arg),) = node.items()
        if key == "Ref" and isinstance(arg, str) and arg in targets and arg not in shadow:
            return value(arg, None)
        if key == "Fn::GetAtt":
            logical_id, attribute = arg.split(".", 1) if isinstance(arg, str) else (arg[0], arg[1])
            if logical_id in targets:
                return value(logical_id, attribute)
        if key == "Fn::Sub":
            text, variables = (arg, {}) if isinstance(arg, str) else (arg[0], arg[1])
            inner = shadow | frozenset(variables)

            def substitute(match: re.Match[str]) -> str:
                name = match.group(1)
                logical_id, _, attribute = name.partition(".")
                if logical_id in targets and name not in inner and logical_id not in inner:
                    return value(logical_id, attribute or None)
                return match.group(0)

            text = _SUB_VARIABLE.sub(substitute, text)
            variables = _rewrite(variables, targets, value, shadow)
            return {key: text if isinstance(arg, str) else [text, variables]}
    return {key: _rewrite(item, targets, value, shadow) for key, item in node.items()}


def adapt(template: dict[str, Any], emulated: frozenset[str], stack: str, account: str, region: str) -> Adapted:
    """``template`` made creatable by moto: stand-ins for what it does not implement, workarounds for its bugs."""
    template = copy.deepcopy(template)
    resources: dict[str, Any] = template.get("Resources", {})
    targets = {lid: res["Type"] for lid, res in resources.items() if needs_standin(res["Type"], emulated)}
    result = Adapted(template=template, standins=dict(targets))

    def value(logical_id: str, attribute: str | None) -> str:
        return placeholder(logical_id, targets[logical_id], attribute, account, region)

    for section in ("Resources", "Outputs", "Conditions"):
        if section in template:
            template[section] = _rewrite(template[section], targets, value, frozenset())
    resources = template.get("Resources", {})
    for logical_id, resource_type in targets.items():
        original = resources[logical_id]
        record = {"standsInFor": resource_type, "stack": stack, "ref": value(logical_id, None)}
        standin: dict[str, Any] = {
            "Type": STANDIN_TYPE,
            # A Name: moto's Parameter.create_from_cloudformation_json ignores the name it generates (None.lower()).
            "Properties": {
                "Name": f"/rehearsal/standin/{stack}/{logical_id}",
                "Type": "String",
                "Value": json.dumps(record, sort_keys=True),
            },
        }
        for attribute in ("DependsOn", "Condition"):
            if attribute in original:
                standin[attribute] = original[attribute]
        resources[logical_id] = standin
    for logical_id, resource in resources.items():
        if logical_id in targets:
            continue
        for workaround in WORKAROUNDS:
            resource.setdefault("Properties", {})
            if resource["Type"] == workaround.resource_type and workaround.apply(resource, resources):
                result.workarounds.append(f"{logical_id} ({resource['Type']}): {workaround.change}")
    return result
