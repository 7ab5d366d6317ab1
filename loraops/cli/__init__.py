"""The ``loraops`` command: one module per noun (``base``, ``finetune``, ``models``, ``serve``, ``storage``), each a
thin layer over :mod:`loraops.registry`. Errors print one line (exit 1; 2 for a usage error; 130 on Ctrl-C);
``--json`` prints one JSON object with a ``schema_version`` (:mod:`loraops.cli.common`)."""

from __future__ import annotations

import argparse
import sys

import loraops

EPILOG = """examples:
  loraops base import ./Llama-2-7b-hf --model-id meta-llama/Llama-2-7b-hf --bucket B
  loraops base import hf://meta-llama/Llama-2-7b-hf --model-id meta-llama/Llama-2-7b-hf --licence llama2 --bucket B
  loraops finetune start --model-id meta-llama/Llama-2-7b-hf --training-uri s3://B/datasets/dolly/<hex>/ \
      --mode adapter --hp lora_r=16 --workflow-arn arn:aws:states:...:stateMachine:loraops-dev-finetune --bucket B
  loraops models tree --bucket B --json
  loraops models describe arn:aws:sagemaker:...:model-package/g/3 --bucket B --json
  loraops models approve arn:aws:sagemaker:...:model-package/g/3 --bucket B
  loraops models promote arn:aws:sagemaker:us-east-1:<staging>:model-package/g/3 --to prod --region us-west-2
  loraops storage report --bucket B
  loraops serve pin arn:aws:sagemaker:...:model-package/<base-group>/1 --prefix loraops-dev --bucket B
  (add --endpoint-url http://127.0.0.1:5000 to talk to a local AWS emulator)"""


def build_parser() -> argparse.ArgumentParser:
    from loraops.cli import base, finetune, models, serve, storage

    parser = argparse.ArgumentParser(
        prog="loraops",
        description=loraops.__doc__.splitlines()[0],
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"loraops {loraops.__version__}")
    nouns = parser.add_subparsers(dest="noun", metavar="{base,finetune,models,serve,storage}", help="what to act on")
    for module in (base, finetune, models, serve, storage):
        module.add_commands(nouns)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "run", None):
        parser.print_help()
        return 0
    from loraops.cli.common import CLIError, fail

    try:
        return args.run(args) or 0
    except CLIError as error:
        return fail(str(error), error.code)
    except KeyboardInterrupt:
        print("loraops: interrupted", file=sys.stderr)
        return 130
    except ImportError as error:
        return fail(f"{error}: the loraops command needs its extras: pip install 'loraops[cli]'")


if __name__ == "__main__":
    sys.exit(main())
