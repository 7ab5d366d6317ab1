"""``loraops models promote <package-arn> --to <env>``: ask the target environment's ``promote`` function (deployed
where cdk.json gives the environment a ``promote_from``) to copy an approved package of its source environment into
its bucket, inside S3, and register it there with lineage (:mod:`loraops.promotion`).

The function does the work, not this process: prod's bucket admits objects only through its VPC's endpoint, except to
roles it names, and the function's role is one of them. This command needs ``lambda:InvokeFunction`` on it, in the
target's region. A refusal (not Approved, another environment, bytes that fail their digests, no approved base in the
target) is one line and exit status 1, and nothing was written; a malformed ARN or environment name is exit status 2.
"""

from __future__ import annotations

import argparse
import json
import os
from typing import Any

from loraops.cli.common import CLIError, UsageError, emit, registry_errors
from loraops.naming import ENVIRONMENT_NAME, PROMOTE_FUNCTION, resource_prefix

#: A promotion copies up to a merged 7B model inside S3: wait as long as Lambda lets the function run, and more.
READ_TIMEOUT_S = 16 * 60


def add_command(models) -> None:
    promote = models.add_parser(
        "promote", help="copy an approved package into another environment (its promote function) and register it"
    )
    promote.add_argument("package_arn", help="the source environment's model package version ARN")
    promote.add_argument("--to", required=True, help="the target environment, e.g. prod")
    promote.add_argument("--function", help="the promote function's name or ARN (default: loraops-<to>-promote)")
    promote.add_argument(
        "--region",
        default=os.environ.get("AWS_REGION") or os.environ.get("AWS_DEFAULT_REGION"),
        help="the target environment's region ($AWS_REGION)",
    )
    promote.add_argument("--profile", default=os.environ.get("AWS_PROFILE"), help="named AWS profile ($AWS_PROFILE)")
    promote.add_argument("--endpoint-url", default=os.environ.get("AWS_ENDPOINT_URL"), help="a local AWS emulator")
    promote.add_argument("--json", action="store_true", help="machine-readable output (one JSON object)")
    promote.set_defaults(run=promote_package)


def lambda_client(args: argparse.Namespace) -> Any:
    """Lambda in ``--region``; one attempt (a promotion is not re-sent behind the caller's back) and a read timeout
    longer than the function's."""
    import boto3
    from botocore.config import Config
    from botocore.exceptions import ProfileNotFound

    if not args.region:
        raise CLIError("name the target environment's region (--region or AWS_REGION)")
    try:
        session = boto3.Session(region_name=args.region, profile_name=args.profile or None)
    except ProfileNotFound as error:
        raise UsageError(str(error)) from None
    config = Config(read_timeout=READ_TIMEOUT_S, retries={"total_max_attempts": 1})
    return session.client("lambda", endpoint_url=args.endpoint_url, config=config)


def _render(p: dict[str, Any]) -> str:
    return (
        f"{p['package_arn']}  version {p['version']}  {p['status']}\n"
        f"  promoted from {p['source_environment']} {p['source_package_arn']}  ({p['content_digest']})"
    )


@registry_errors
def promote_package(args: argparse.Namespace) -> int:
    from loraops.promotion import PromotionError, parse_package_arn

    try:
        parse_package_arn(args.package_arn)
    except PromotionError as error:
        raise UsageError(str(error)) from None
    if not ENVIRONMENT_NAME.match(args.to):
        raise UsageError(f"--to {args.to!r} is not an environment name (1-16 lowercase letters and digits)")
    function = args.function or f"{resource_prefix(args.to)}-{PROMOTE_FUNCTION}"
    response = lambda_client(args).invoke(
        FunctionName=function,
        InvocationType="RequestResponse",
        Payload=json.dumps({"package_arn": args.package_arn}).encode(),
    )
    try:
        result = json.loads(response["Payload"].read() or b"null")
    except ValueError:
        result = None
    if response.get("FunctionError") or not isinstance(result, dict):
        detail = result.get("errorMessage") if isinstance(result, dict) else None
        raise CLIError(f"{function} failed: {detail or response.get('FunctionError') or 'no result'}")
    if not result.get("promoted"):
        raise CLIError(f"not promoted: {result.get('reason') or 'no reason given'}")
    emit(args, result, _render)
    return 0
