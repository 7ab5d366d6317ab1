"""IAM lint: parliament (its own copy of the IAM service reference) over every synthesized identity policy.

CloudFormation tokens are resolved first to ARNs of the right resource type (``Fn::GetAtt``/``Fn::ImportValue`` are
looked up in the templates), so findings are about the policies, not about unresolved placeholders. Each finding
is attributed to its statement; the exceptions below are granular (statement id and issue) and reasoned.
"""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import pytest

from tests.infra.conftest import ENVIRONMENTS

#: (statement id, parliament issue) -> why it stays.
EXCEPTIONS = {
    ("SageMakerDescribe", "RESOURCE_MISMATCH"): "Describe* also matches DescribeLineageGroup, which takes no resource "
    "ARN (granted on '*' in SageMakerListAndSearch); every other Describe is limited to this account and region.",
    ("SageMakerListAndSearch", "RESOURCE_STAR"): "a few of the List actions accept a resource ARN; the statement is "
    "read-only and scoped by the account's own credentials.",
}
#: ARN shapes for the resource types whose tokens appear in the policies.
ARN_SHAPES = {
    "AWS::KMS::Key": "arn:aws:kms:{region}:{account}:key/resolved",
    "AWS::IAM::Role": "arn:aws:iam::{account}:role/resolved",
    "AWS::Logs::LogGroup": "arn:aws:logs:{region}:{account}:log-group:resolved:*",
    "AWS::S3::Bucket": "arn:aws:s3:::resolved",
    "AWS::EC2::VPC": "vpc-resolved",
    "AWS::EC2::Subnet": "subnet-resolved",
    "AWS::EC2::SecurityGroup": "sg-resolved",
    "AWS::SQS::Queue": "arn:aws:sqs:{region}:{account}:resolved",
    "AWS::DynamoDB::Table": "arn:aws:dynamodb:{region}:{account}:table/resolved",
}


class Templates:
    """Every synthesized template of the app, with the exports they offer each other."""

    def __init__(self, folder: Path) -> None:
        self.templates = {p.name: json.loads(p.read_text()) for p in folder.glob("*.template.json")}
        self.exports = {}
        for template in self.templates.values():
            for output in template.get("Outputs", {}).values():
                if "Export" in output:
                    self.exports[output["Export"]["Name"]] = (output["Value"], template)

    def resolve(self, node, template: dict, region: str, account: str):
        if isinstance(node, list):
            return [self.resolve(v, template, region, account) for v in node]
        if not isinstance(node, dict):
            return node
        if "Fn::Join" in node:
            separator, parts = node["Fn::Join"]
            return separator.join(str(self.resolve(p, template, region, account)) for p in parts)
        if "Ref" in node:
            pseudo = {
                "AWS::Partition": "aws",
                "AWS::Region": region,
                "AWS::AccountId": account,
                "AWS::URLSuffix": "amazonaws.com",
            }
            if node["Ref"] in pseudo:
                return pseudo[node["Ref"]]
            return self._shape(template["Resources"][node["Ref"]]["Type"], region, account).split("/")[-1]
        if "Fn::GetAtt" in node:
            logical_id = node["Fn::GetAtt"][0]
            return self._shape(template["Resources"][logical_id]["Type"], region, account)
        if "Fn::ImportValue" in node:
            value, producer = self.exports[node["Fn::ImportValue"]]
            return self.resolve(value, producer, region, account)
        return {k: self.resolve(v, template, region, account) for k, v in node.items()}

    @staticmethod
    def _shape(resource_type: str, region: str, account: str) -> str:
        return ARN_SHAPES[resource_type].format(region=region, account=account)

    def identity_statements(self, env: str, region: str, account: str):
        """(template, resource, statement) for every statement of every identity policy of ``env``."""
        for name, template in self.templates.items():
            if not name.startswith(f"loraops-{env}-"):
                continue
            for logical_id, resource in template["Resources"].items():
                documents = []
                if resource["Type"] == "AWS::IAM::Policy":
                    documents = [resource["Properties"]["PolicyDocument"]]
                elif resource["Type"] == "AWS::IAM::Role":
                    documents = [p["PolicyDocument"] for p in resource["Properties"].get("Policies", [])]
                for document in documents:
                    for statement in self.resolve(document, template, region, account)["Statement"]:
                        yield name, logical_id, statement


@pytest.fixture(scope="module")
def templates(synthesized) -> Templates:
    app = next(iter(synthesized.values())).storage.node.root
    return Templates(Path(app.synth().directory))


@pytest.mark.parametrize("env", ENVIRONMENTS)
def test_every_identity_policy_passes_parliament(env, templates, synthesized):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # parliament imports pkg_resources
        import parliament

    config = synthesized[env].config
    unexplained, checked = [], 0
    for template, logical_id, statement in templates.identity_statements(env, config.region, config.account):
        checked += 1
        policy = json.dumps({"Version": "2012-10-17", "Statement": [statement]})
        for finding in parliament.analyze_policy_string(policy, ignore_private_auditors=True).findings:
            if (statement.get("Sid"), finding.issue) not in EXCEPTIONS:
                unexplained.append(f"{template} {logical_id} {statement.get('Sid')}: {finding.issue} {finding.detail}")
    assert checked > 20
    assert unexplained == [], "\n".join(unexplained)


def test_the_lint_catches_a_wildcard_on_an_action_that_takes_resources():
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        import parliament

    policy = {"Version": "2012-10-17", "Statement": [{"Effect": "Allow", "Action": "s3:GetObject", "Resource": "*"}]}
    issues = {
        f.issue for f in parliament.analyze_policy_string(json.dumps(policy), ignore_private_auditors=True).findings
    }
    assert "RESOURCE_STAR" in issues
