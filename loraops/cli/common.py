"""Options every command shares, the registry they open, and the one place output is formatted."""

from __future__ import annotations

import argparse
import json
import os
import sys
from typing import Any


class CLIError(Exception):
    """Printed as one line, exit status 1."""


def add_registry_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--bucket", default=os.environ.get("LORAOPS_BUCKET"), help="artifact bucket ($LORAOPS_BUCKET)")
    parser.add_argument(
        "--region",
        default=os.environ.get("AWS_REGION") or os.environ.get("AWS_DEFAULT_REGION"),
        help="AWS region ($AWS_REGION)",
    )
    # Accepted for older scripts and ignored: a new package's approval comes from the environment's group tags.
    parser.add_argument("--approval", choices=["auto", "manual"], help=argparse.SUPPRESS)
    parser.add_argument(
        "--endpoint-url",
        default=os.environ.get("AWS_ENDPOINT_URL"),
        help="talk to this endpoint instead of AWS (a local emulator)",
    )
    parser.add_argument("--json", action="store_true", help="machine-readable output")


def client(args: argparse.Namespace, service: str, role_arn: str | None = None):
    """A boto3 client for ``service`` in ``--region`` (at ``--endpoint-url``); with ``role_arn``, as that role."""
    import boto3
    from botocore.config import Config

    if not args.bucket or not args.region:
        raise CLIError(
            "name the environment's artifact bucket and region (--bucket, --region or LORAOPS_BUCKET, AWS_REGION)"
        )
    session = boto3.Session(region_name=args.region)
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
    from loraops.registry import Registry, RegistryError

    sagemaker = client(args, "sagemaker", role_arn)
    s3 = client(args, "s3", role_arn)
    try:
        return Registry(sagemaker, s3, args.bucket, args.region)
    except RegistryError as error:
        raise CLIError(str(error)) from None


def emit(args: argparse.Namespace, data: Any, human) -> None:
    """``--json``: the data; otherwise ``human(data)`` renders it with rich."""
    if args.json:
        print(json.dumps(data, indent=2, default=str))
        return
    from rich.console import Console

    Console().print(human(data))


def fail(message: str) -> int:
    print(f"loraops: error: {message}", file=sys.stderr)
    return 1


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
        from loraops.registry import RegistryError

        try:
            return function(args, *rest)
        except (RegistryError, FineTuneError, ManifestError, NamingError) as error:
            raise CLIError(str(error)) from None
        except ClientError as error:
            raise CLIError(f"{error.operation_name}: {error.response['Error'].get('Message', error)}") from None
        except BotoCoreError as error:
            raise CLIError(str(error)) from None

    return wrapper
