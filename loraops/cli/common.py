"""Options every command shares, the registry they open, and the one place output and errors are formatted.

Conventions (those of ``hf`` and the AWS CLI): an error is one line on stderr, exit status 1 for a failure and 2
for a usage error (an argument that cannot be right: a malformed URI or digest, an unknown region); Ctrl-C exits
130 with one line; progress bars go to stderr; ``--json`` prints one JSON object with ``schema_version``, numbers
as numbers and ``null`` for missing values; human output is full width, unwrapped, when stdout is not a terminal.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from typing import Any

#: Version of every ``--json`` document's shape; raised when a field changes meaning or is removed.
JSON_SCHEMA_VERSION = 1


class CLIError(Exception):
    """Printed as one line; exit status ``code`` (1: the command failed)."""

    code = 1


class UsageError(CLIError):
    """An argument that cannot be right; exit status 2, as argparse's own usage errors."""

    code = 2


def add_registry_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--bucket", default=os.environ.get("LORAOPS_BUCKET"), help="artifact bucket ($LORAOPS_BUCKET)")
    parser.add_argument(
        "--region",
        default=os.environ.get("AWS_REGION") or os.environ.get("AWS_DEFAULT_REGION"),
        help="AWS region ($AWS_REGION)",
    )
    parser.add_argument(
        "--profile", default=os.environ.get("AWS_PROFILE"), help="named AWS profile for credentials ($AWS_PROFILE)"
    )
    parser.add_argument(
        "--endpoint-url",
        default=os.environ.get("AWS_ENDPOINT_URL"),
        help="talk to this endpoint instead of AWS (a local emulator)",
    )
    parser.add_argument("--json", action="store_true", help="machine-readable output (one JSON object)")


def _session(args: argparse.Namespace):
    import boto3
    from botocore.exceptions import ProfileNotFound

    if not args.bucket or not args.region:
        raise CLIError(
            "name the environment's artifact bucket and region (--bucket, --region or LORAOPS_BUCKET, AWS_REGION)"
        )
    try:
        session = boto3.Session(region_name=args.region, profile_name=getattr(args, "profile", None) or None)
    except ProfileNotFound as error:
        raise UsageError(str(error)) from None
    known = {r for p in session.get_available_partitions() for r in session.get_available_regions("sagemaker", p)}
    if args.region not in known:
        raise UsageError(f"unknown region {args.region!r} (SageMaker regions: e.g. us-east-1, eu-west-1)")
    return session


def client(args: argparse.Namespace, service: str, role_arn: str | None = None):
    """A boto3 client for ``service`` in ``--region`` (at ``--endpoint-url``); with ``role_arn``, as that role."""
    import boto3
    from botocore.config import Config

    session = _session(args)
    config = Config(retries={"max_attempts": 2})
    if role_arn:
        credentials = session.client("sts", endpoint_url=args.endpoint_url, config=config).assume_role(
            RoleArn=role_arn, RoleSessionName="loraops-cli"
        )["Credentials"]
        session = boto3.Session(
            region_name=args.region,
            aws_access_key_id=credentials["AccessKeyId"],
            aws_secret_access_key=credentials["SecretAccessKey"],
            aws_session_token=credentials["SessionToken"],
        )
    return session.client(service, endpoint_url=args.endpoint_url, config=config)


def open_registry(args: argparse.Namespace, role_arn: str | None = None):
    """The registry of ``--bucket``; with ``role_arn``, as that role (e.g. the environment's approver)."""
    from loraops.packages import RegistryError
    from loraops.registry import Registry

    sagemaker = client(args, "sagemaker", role_arn)
    s3 = client(args, "s3", role_arn)
    try:
        return Registry(sagemaker, s3, args.bucket, args.region)
    except RegistryError as error:
        raise CLIError(str(error)) from None


def plain(value: Any) -> Any:
    """JSON values: empty strings become null, numeric strings stay strings (ids), nested values recurse."""
    if isinstance(value, dict):
        return {k: plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [plain(v) for v in value]
    return None if value == "" else value


def console(stderr: bool = False):
    """A rich console: the terminal's width on a terminal; otherwise never wrapped (ARNs stay whole)."""
    from rich.console import Console

    stream = sys.stderr if stderr else sys.stdout
    if stream.isatty():
        return Console(file=stream, stderr=stderr)
    return Console(file=stream, width=100_000, soft_wrap=True, no_color=True, highlight=False)


def emit(args: argparse.Namespace, data: dict[str, Any], human) -> None:
    """``--json``: ``data`` with ``schema_version``; otherwise ``human(data)`` rendered with rich."""
    if args.json:
        print(json.dumps({"schema_version": JSON_SCHEMA_VERSION, **plain(data)}, indent=2, default=str))
        return
    console().print(human(data))


def package_json(package) -> dict[str, Any]:
    """One package as ``--json`` prints it."""
    from dataclasses import asdict

    return asdict(package)


def fail(message: str, code: int = 1) -> int:
    print(f"loraops: error: {message}", file=sys.stderr)
    return code


def size(n: int) -> str:
    for unit in ("B", "KB", "MB", "GB", "TB"):
        if n < 1024 or unit == "TB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return str(n)


def registry_errors(function):
    """Turn the registry's and AWS's errors into one-line CLI errors."""

    def wrapper(args: argparse.Namespace, *rest) -> int:
        from botocore.exceptions import BotoCoreError, ClientError

        from loraops.finetune import FineTuneError
        from loraops.manifest import ManifestError
        from loraops.naming import NamingError
        from loraops.packages import RegistryError

        try:
            return function(args, *rest)
        except NamingError as error:
            raise UsageError(str(error)) from None
        except (RegistryError, FineTuneError, ManifestError) as error:
            raise CLIError(str(error)) from None
        except ClientError as error:
            raise CLIError(f"{error.operation_name}: {error.response['Error'].get('Message', error)}") from None
        except BotoCoreError as error:
            raise CLIError(str(error)) from None

    return wrapper
