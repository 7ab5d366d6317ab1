"""A template's ``Rules`` (CDK's ``CheckBootstrapVersion``), which moto's CloudFormation ignores, checked against the
parameter values the stack would get."""

from __future__ import annotations

from typing import Any


class RuleError(ValueError):
    """A rule's assertion does not hold, or uses a function this evaluator does not know."""


def _evaluate(node: Any, parameters: dict[str, Any]) -> Any:
    if isinstance(node, list):
        return [_evaluate(item, parameters) for item in node]
    if not isinstance(node, dict):
        return node
    if len(node) != 1:
        raise RuleError(f"cannot evaluate {node!r}")
    ((function, argument),) = node.items()
    if function == "Ref":
        if argument not in parameters:
            raise RuleError(f"a rule refers to {argument}, which is not a parameter")
        return parameters[argument]
    values = _evaluate(argument, parameters)
    if function == "Fn::Not":
        return not values[0]
    if function == "Fn::And":
        return all(values)
    if function == "Fn::Or":
        return any(values)
    if function == "Fn::Equals":
        return values[0] == values[1]
    if function == "Fn::Contains":
        return values[1] in values[0]
    raise RuleError(f"cannot evaluate {function} (supported: Ref, Fn::Not, Fn::And, Fn::Or, Fn::Equals, Fn::Contains)")


def check_rules(template: dict[str, Any], parameters: dict[str, Any]) -> None:
    """Raise ``RuleError`` with the rule's name and ``AssertDescription`` for the first assertion that fails."""
    for name, rule in template.get("Rules", {}).items():
        if "RuleCondition" in rule and not _evaluate(rule["RuleCondition"], parameters):
            continue
        for assertion in rule.get("Assertions", []):
            if not _evaluate(assertion["Assert"], parameters):
                raise RuleError(f"rule {name} fails: {assertion.get('AssertDescription', assertion['Assert'])}")
