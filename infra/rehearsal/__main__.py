"""``python -m infra.rehearsal --env dev [--json out.json]`` (``make rehearse ENV=dev``): create an environment's
stacks in a local moto server's CloudFormation, print a table per stack, exit 1 naming the stack that failed."""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

from infra.rehearsal.assembly import AssemblyError, deploy_order, read_stacks
from infra.rehearsal.emulator import Emulator
from infra.rehearsal.run import RehearsalError, rehearse

#: What the deploy flow writes before the serving stack (``loraops serve pin``: an approved package's S3 prefix).
SERVED_PREFIX_SEED = "base/rehearsal/"


def default_seeds(prefix: str) -> dict[str, str]:
    from loraops.endpoints import served_model_parameter

    return {served_model_parameter(prefix): SERVED_PREFIX_SEED}


def synthesize(env: str, outdir: Path) -> Path:
    """``cdk synth -c env=<env>`` into ``outdir`` (the nag gate included), in this process."""
    from infra.app_factory import build_app
    from infra.config import ENV_SELECTOR_KEY
    from infra.deploy import ROOT

    context = {**json.loads((ROOT / "cdk.json").read_text())["context"], ENV_SELECTOR_KEY: env}
    app, _ = build_app(context=context, outdir=str(outdir))
    app.synth()
    return outdir


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m infra.rehearsal", description=__doc__.splitlines()[0])
    parser.add_argument("--env", required=True, help="environment name from cdk.json")
    parser.add_argument("--cdk-out", type=Path, help="a synthesized assembly to reuse (default: synthesize the env)")
    parser.add_argument("--stacks", nargs="+", help="stacks to create (default: all of the env's, in the assembly)")
    parser.add_argument(
        "--ssm", action="append", default=[], metavar="NAME=VALUE", help="an SSM parameter a template reads"
    )
    parser.add_argument("--json", type=Path, help="write the report there as JSON")
    args = parser.parse_args(argv)

    from infra.config import ConfigError
    from infra.deploy import load_environment

    try:
        config = load_environment(args.env)
    except ConfigError as error:
        print(f"rehearsal: {error}", file=sys.stderr)
        return 2
    seeds = default_seeds(config.prefix)
    for item in args.ssm:
        name, sep, value = item.partition("=")
        if not sep:
            parser.error(f"--ssm {item!r}: expected NAME=VALUE")
        seeds[name] = value
    with tempfile.TemporaryDirectory(prefix="rehearsal-cdk.out-") as scratch:
        cdk_out = args.cdk_out or synthesize(config.name, Path(scratch))
        try:
            stacks = read_stacks(cdk_out)
            names = args.stacks or [name for name in stacks if name.startswith(f"{config.prefix}-")]
            order = deploy_order(stacks, names)
            with Emulator(config.account) as aws:
                report = rehearse(aws, order, seeds)
        except (AssemblyError, RehearsalError) as error:
            print(f"rehearsal failed: {error}", file=sys.stderr)
            return 1
    print(report.table())
    if args.json:
        args.json.write_text(json.dumps(report.as_dict(), indent=2, sort_keys=True) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
