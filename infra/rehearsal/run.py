"""Bootstrap the emulator, publish assets, seed parameters, create the stacks, and report what happened."""

from __future__ import annotations

import io
import json
import zipfile
from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from infra.rehearsal.adapt import STANDIN_TYPE, WORKAROUNDS, adapt, emulated_types
from infra.rehearsal.assembly import StackArtifact
from infra.rehearsal.emulator import Emulator
from infra.rehearsal.rules import RuleError, check_rules

#: The version ``cdk bootstrap`` records in SSM; templates' CheckBootstrapVersion rule wants 6 or later.
BOOTSTRAP_VERSION = "30"
BOOTSTRAP_PARAMETER_PREFIX = "/cdk-bootstrap/"
SSM_PARAMETER_TYPE = "AWS::SSM::Parameter::"
CAPABILITIES = ["CAPABILITY_IAM", "CAPABILITY_NAMED_IAM", "CAPABILITY_AUTO_EXPAND"]


class RehearsalError(RuntimeError):
    """A stack could not be created in the emulator (the message names the stack and the reason)."""


@dataclass
class StackReport:
    name: str
    status: str
    created: dict[str, int] = field(default_factory=dict)  # type -> count, created by the emulator
    stood_in: dict[str, int] = field(default_factory=dict)  # type -> count, NOT created by the emulator
    workarounds: list[str] = field(default_factory=list)
    outputs: dict[str, str] = field(default_factory=dict)


@dataclass
class Report:
    stacks: list[StackReport] = field(default_factory=list)
    seeded_parameters: dict[str, str] = field(default_factory=dict)
    published_assets: list[str] = field(default_factory=list)  # s3://bucket/key
    unbuilt_images: list[str] = field(default_factory=list)  # Docker image assets (need a Docker engine)

    @property
    def not_created_types(self) -> list[str]:
        """Every resource type the emulator could not create (stood in), across the stacks."""
        return sorted({t for stack in self.stacks for t in stack.stood_in})

    def as_dict(self) -> dict[str, Any]:
        causes = [{"type": w.resource_type, "change": w.change, "moto_cause": w.cause} for w in WORKAROUNDS]
        return {**asdict(self), "not_created_types": self.not_created_types, "moto_workarounds": causes}

    def table(self) -> str:
        lines = []
        for stack in self.stacks:
            lines.append(f"{stack.name}: {stack.status}")
            rows = [("created", t, n) for t, n in sorted(stack.created.items())]
            rows += [("stood in", t, n) for t, n in sorted(stack.stood_in.items())]
            width = max((len(t) for _, t, _ in rows), default=0)
            lines += [f"  {kind:<9} {t:<{width}} {n:>3}" for kind, t, n in rows]
            lines += [f"  workaround: {w}" for w in stack.workarounds]
        lines.append("not created by the emulator (stood in): " + (", ".join(self.not_created_types) or "none"))
        if self.unbuilt_images:
            lines.append("Docker image assets not built (no Docker engine): " + ", ".join(self.unbuilt_images))
        return "\n".join(lines)


def _fill(text: str, account: str, region: str) -> str:
    return (
        text.replace("${AWS::AccountId}", account).replace("${AWS::Region}", region).replace("${AWS::Partition}", "aws")
    )


def _zip_directory(directory: Path) -> bytes:
    """The directory as a zip, entries sorted and timestamps fixed (what the CDK CLI uploads, byte for byte aside)."""
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as archive:
        for path in sorted(p for p in directory.rglob("*") if p.is_file()):
            info = zipfile.ZipInfo(str(path.relative_to(directory)), date_time=(1980, 1, 1, 0, 0, 0))
            info.external_attr = 0o644 << 16
            archive.writestr(info, path.read_bytes())
    return buffer.getvalue()


def publish_assets(aws: Emulator, stack: StackArtifact, report: Report) -> None:
    """Upload ``stack``'s file assets where its template expects them (the bootstrap bucket), creating the bucket
    as ``cdk bootstrap`` would; Docker image assets are recorded as not built."""
    manifest = stack.assets()
    base = stack.assets_path.parent if stack.assets_path else Path(".")
    for asset in manifest.get("files", {}).values():
        source = base / asset["source"]["path"]
        body = _zip_directory(source) if asset["source"].get("packaging") == "zip" else source.read_bytes()
        for destination in asset["destinations"].values():
            region = destination.get("region", stack.region)
            bucket = _fill(destination["bucketName"], stack.account, region)
            s3 = aws.client("s3", region)
            if bucket not in {b["Name"] for b in s3.list_buckets()["Buckets"]}:
                extra = {} if region == "us-east-1" else {"CreateBucketConfiguration": {"LocationConstraint": region}}
                try:
                    s3.create_bucket(Bucket=bucket, **extra)
                except s3.exceptions.BucketAlreadyExists:
                    raise RehearsalError(
                        f"{stack.name}: the assets bucket {bucket} belongs to another account of the emulator"
                    ) from None
            key = _fill(destination["objectKey"], stack.account, region)
            s3.put_object(Bucket=bucket, Key=key, Body=body)
            report.published_assets.append(f"s3://{bucket}/{key}")
    for asset in manifest.get("dockerImages", {}).values():
        report.unbuilt_images.append(asset.get("displayName", asset["source"].get("directory", "?")))


def seed_parameters(
    aws: Emulator, stack: StackArtifact, seeds: dict[str, str], report: Report, bootstrap_version: str
) -> dict[str, Any]:
    """Create the SSM parameters ``stack``'s SSM-typed parameters read: the CDK bootstrap version (as ``cdk
    bootstrap`` writes it) and the others from ``seeds`` (what the deploy flow writes before this stack). Returns
    the value each template parameter gets (its default, or what its SSM parameter holds)."""
    ssm = aws.client("ssm", stack.region)
    missing = []
    values: dict[str, Any] = {}
    for name, parameter in stack.template().get("Parameters", {}).items():
        if not parameter.get("Type", "").startswith(SSM_PARAMETER_TYPE) or "Default" not in parameter:
            values[name] = parameter.get("Default")
            continue
        path = parameter["Default"]
        if path.startswith(BOOTSTRAP_PARAMETER_PREFIX):
            value = bootstrap_version
        elif path in seeds:
            value = seeds[path]
        else:
            missing.append(f"{name} reads {path}")
            continue
        ssm.put_parameter(Name=path, Value=value, Type="String", Overwrite=True)
        report.seeded_parameters[path] = value
        values[name] = value
    if missing:
        raise RehearsalError(
            f"{stack.name}: SSM parameters with no value to seed ({'; '.join(missing)}); "
            "give each one (--ssm NAME=VALUE), as the deploy flow would write it"
        )
    return values


def create_stack(aws: Emulator, stack: StackArtifact, emulated: frozenset[str]) -> StackReport:
    """Create ``stack`` (adapted) in the emulator's CloudFormation and check what it says it created."""
    from botocore.exceptions import BotoCoreError, ClientError
    from botocore.parsers import ResponseParserError

    adapted = adapt(stack.template(), emulated, stack.name, stack.account, stack.region)
    cloudformation = aws.client("cloudformation", stack.region)
    try:
        cloudformation.create_stack(
            StackName=stack.name, TemplateBody=json.dumps(adapted.template), Capabilities=CAPABILITIES
        )
        described = cloudformation.describe_stacks(StackName=stack.name)["Stacks"][0]
    except ClientError as error:
        raise RehearsalError(f"{stack.name}: the emulator's CloudFormation refused it: {error}") from None
    except (BotoCoreError, ResponseParserError) as error:  # moto answers its own exceptions with an HTML 500
        raise RehearsalError(f"{stack.name}: the emulator failed while creating it (a moto bug?): {error}") from None
    if described["StackStatus"] != "CREATE_COMPLETE":
        raise RehearsalError(f"{stack.name}: {described['StackStatus']} ({described.get('StackStatusReason', '')})")
    listed = {
        r["LogicalResourceId"]: r["ResourceType"]
        for page in cloudformation.get_paginator("list_stack_resources").paginate(StackName=stack.name)
        for r in page["StackResourceSummaries"]
    }
    expected = adapted.template["Resources"]
    absent = sorted(lid for lid in expected if lid not in listed)
    if absent:
        raise RehearsalError(
            f"{stack.name}: the emulator reports CREATE_COMPLETE but did not create {', '.join(absent)}"
        )
    created: Counter[str] = Counter()
    stood_in: Counter[str] = Counter()
    for logical_id, resource_type in listed.items():
        if logical_id in adapted.standins:
            assert resource_type == STANDIN_TYPE, (logical_id, resource_type)
            stood_in[adapted.standins[logical_id]] += 1
        else:
            created[resource_type] += 1
    outputs = {o["OutputKey"]: o.get("OutputValue", "") for o in described.get("Outputs", [])}
    return StackReport(
        name=stack.name,
        status=described["StackStatus"],
        created=dict(created),
        stood_in=dict(stood_in),
        workarounds=adapted.workarounds,
        outputs=outputs,
    )


def rehearse(
    aws: Emulator,
    stacks: list[StackArtifact],
    seeds: dict[str, str] | None = None,
    bootstrap_version: str = BOOTSTRAP_VERSION,
) -> Report:
    """Create ``stacks`` (already in deploy order, see ``deploy_order``) in ``aws``; raises ``RehearsalError`` at
    the first stack that cannot be created, naming it. The template's ``Rules`` are checked first (moto ignores
    them), with the parameter values the stack gets."""
    report = Report()
    emulated = emulated_types()
    for stack in stacks:
        publish_assets(aws, stack, report)
        parameters = seed_parameters(aws, stack, seeds or {}, report, bootstrap_version)
        try:
            check_rules(stack.template(), parameters)
        except RuleError as error:
            raise RehearsalError(f"{stack.name}: {error}") from None
        report.stacks.append(create_stack(aws, stack, emulated))
    return report
