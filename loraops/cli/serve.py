"""``loraops serve pin``: choose the model an environment's endpoint serves (the serving stack reads it)."""

from __future__ import annotations

import argparse
import os

from loraops.cli.common import CLIError, add_registry_options, client, emit, open_registry, registry_errors


def add_commands(nouns) -> None:
    serve = nouns.add_parser("serve", help="the environment's endpoint").add_subparsers(
        dest="verb", metavar="{pin}", help="what to do"
    )
    pin = serve.add_parser("pin", help="serve this approved base or merged package (then `cdk deploy` the stack)")
    pin.add_argument("package_arn", help="an approved base or merged package version's ARN")
    pin.add_argument(
        "--prefix",
        default=os.environ.get("LORAOPS_PREFIX"),
        help="the environment's name prefix, loraops-<env> ($LORAOPS_PREFIX)",
    )
    add_registry_options(pin)
    pin.set_defaults(run=pin_model)


@registry_errors
def pin_model(args: argparse.Namespace) -> int:
    from loraops.endpoints import served_model_parameter
    from loraops.serve_pin import pin_served_model

    if not args.prefix:
        raise CLIError("name the environment (--prefix loraops-<env> or LORAOPS_PREFIX)")
    package = pin_served_model(open_registry(args), client(args, "ssm"), args.prefix, args.package_arn)
    parameter = served_model_parameter(args.prefix)
    emit(
        args,
        {"package": package.arn, "parameter": parameter, "prefix": package.model_data_prefix},
        lambda p: f"{p['parameter']} = {p['prefix']}  (cdk deploy {args.prefix}-serving serves it)",
    )
    return 0
