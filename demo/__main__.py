"""``python -m demo`` (``make demo``): the loraops lifecycle against a local AWS emulator, on embedded defaults.

Every step goes through the code that runs in AWS: the ``loraops`` command, the synthesized stacks' resources, the
fine-tune workflow's state machine, the trainer's container entry point, the registration function and the serving
package. What stands in for AWS: moto's server (S3, SageMaker, Step Functions, DynamoDB, Resource Groups, SSM), this
process running the training job the emulator created, and folders standing for ``/opt/ml``.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from demo import held_out
from demo.command import loraops
from demo.finetune import HYPERPARAMETERS, finetune, package_prefix, register, upload_dataset
from demo.local_aws import CREDENTIALS, LocalAWS
from demo.report import Report, answer_line, held_out_rows
from demo.serving import S3Calls, mount, serve_and_compare
from demo.stand_in import HELD_OUT, PRETRAIN_STEPS, SHAPES, build_stand_in, split_dolly

ROOT = Path(__file__).resolve().parents[1]
DOLLY = ROOT / "data" / "dolly" / "databricks-dolly-15k-sample.jsonl"


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m demo", description=__doc__.splitlines()[0])
    parser.add_argument("--size", choices=SHAPES, default="demo", help="the stand-in base's shape")
    parser.add_argument("--base-steps", type=int, default=PRETRAIN_STEPS, help="the stand-in's pre-training steps")
    parser.add_argument("--steps", type=int, default=100, help="optimizer steps of each fine-tune")
    parser.add_argument("--prompts", type=int, default=5, help=f"held-back dolly prompts answered (<= {HELD_OUT})")
    parser.add_argument("--max-new-tokens", type=int, default=64)
    parser.add_argument("--workdir", type=Path, default=ROOT / ".demo", help="work files and the report")
    args = parser.parse_args(argv)
    if not 1 <= args.prompts <= HELD_OUT:
        parser.error(f"--prompts must be between 1 and {HELD_OUT} (the held-out records)")
    return args


def silence_node_banner() -> None:
    """Silence jsii's Node end-of-life banner for the Node that will run the synth (``make demo`` sets the same
    variable for Node 20): jsii's Python side relays the banner's raw lines as ``b'!!...'``."""
    name = "JSII_SILENCE_WARNING_END_OF_LIFE_NODE_VERSION"
    try:
        version = subprocess.run(["node", "--version"], capture_output=True, text=True, timeout=60).stdout
    except (OSError, subprocess.SubprocessError):
        return  # no Node: the synth step says so itself
    major = version.strip().lstrip("v").split(".")[0]
    silenced = [v.strip() for v in os.environ.get(name, "").split(",") if v.strip()]
    if major.isdigit() and major not in silenced:
        os.environ[name] = ",".join([*silenced, major])


class Steps:
    """Times each step, prints it as it starts and ends, and keeps the wall times for the report."""

    def __init__(self, report: Report) -> None:
        self.report = report

    @contextlib.contextmanager
    def __call__(self, name: str) -> Iterator[None]:
        print(f"\n== {name}", flush=True)
        start = time.monotonic()
        yield
        seconds = time.monotonic() - start
        self.report.steps.append((name, seconds))
        print(f"   done in {seconds:.1f} s", flush=True)


def stand_in_base(size: str, steps: int, workdir: Path) -> Path:
    """The stand-in base (``demo/stand_in.py``), built once per size and pre-training steps, reused by later runs."""
    folder = workdir / f"base-{size}"
    before = (folder / "stand-in.json").read_bytes() if (folder / "stand-in.json").is_file() else b""
    build_stand_in(folder, size, DOLLY, steps)
    reused = before == (folder / "stand-in.json").read_bytes()
    print(f"   {'reusing' if reused else 'built'} the stand-in base in {folder}")
    return folder


def losses(opt_ml: Path) -> list[tuple[int, float]]:
    records = [json.loads(line) for line in (opt_ml / "output" / "data" / "metrics.jsonl").read_text().splitlines()]
    return [(r["step"], r["loss"]) for r in records if "loss" in r]


def run(args: argparse.Namespace) -> Path:
    model_id = f"loraops-demo/llama-{args.size}"
    run_dir = args.workdir / "run"
    shutil.rmtree(run_dir, ignore_errors=True)  # a second run starts clean (the stand-in base is kept)
    run_dir.mkdir(parents=True)
    report = Report(f"loraops demo: {model_id}")
    report.notes.append(
        f"Stand-in base {model_id}: a {args.size} Llama-architecture model with a BPE tokenizer trained on the "
        f"dolly sample, pre-trained for {args.base_steps} steps on the sample's instructions and contexts as plain "
        "paragraphs, never its answers, the prompt template nor an end-of-text token (not Llama-2; demo/stand_in.py). "
        f"The sample's last {HELD_OUT} records are held out of everything. AWS is "
        "moto's server on 127.0.0.1; the training jobs the workflow creates there ran on this machine "
        f"({args.steps} steps each, LoRA without 4-bit quantization)."
    )
    step = Steps(report)
    os.environ.update(CREDENTIALS)  # the loraops command's boto3 sessions; they reach nothing but the emulator
    os.environ.setdefault("COLUMNS", "140")
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    from transformers.utils import logging as transformers_logging

    transformers_logging.disable_progress_bar()
    silence_node_banner()
    from demo.environment import create_in, synthesize  # starts jsii's Node

    with step("synthesize the dev environment (stand-in base, manual approval) with the cdk-nag gate"):
        environment = synthesize(model_id)
    with LocalAWS() as aws:
        print(f"   local AWS emulator at {aws.url}")
        with step("create the registry resources from the synthesized templates"):
            environment = create_in(aws, environment)
            groups = environment.resources("registry", "AWS::SageMaker::ModelPackageGroup")
            print(
                f"   bucket {environment.bucket}, {len(groups)} package groups, collections, idempotency table, "
                f"state machine {environment.workflow_arn.rsplit(':', 1)[1]}"
            )
        with step("build the stand-in base, import it to base/ uncompressed, approve it"):
            base_dir = stand_in_base(args.size, args.base_steps, args.workdir)
            base = json.loads(
                loraops(
                    aws,
                    environment,
                    "base",
                    "import",
                    str(base_dir),
                    "--model-id",
                    model_id,
                    "--licence",
                    "demo stand-in, random weights",
                    "--json",
                    show=False,
                )
            )
            print(f"   {base['arn']} {base['status']} at {base['model_data_prefix']}")
            loraops(aws, environment, "models", "approve", base["arn"], "--reason", "demo: stand-in base")
        training, held_back = split_dolly(DOLLY)
        training_uri = upload_dataset(aws, environment, training)
        packages, runs = {}, {}
        for mode in ("adapter", "merged"):
            with step(f"fine-tune ({mode}) through the workflow, the job run as SageMaker runs it"):
                event, runs[mode] = finetune(aws, environment, model_id, mode, training_uri, args.steps, run_dir)
            with step(f"deliver the job's event to register-finetune ({mode})"):
                packages[mode] = register(aws, environment, event)
        with step("approve both with loraops models approve; show the tree and the storage report"):
            for arn in packages.values():
                loraops(aws, environment, "models", "approve", arn, "--reason", "demo: evaluated")
            report.tree = loraops(aws, environment, "models", "tree")
            loraops(aws, environment, "storage", "report")
            report.storage = json.loads(loraops(aws, environment, "storage", "report", "--json", show=False))
        with step("serve the base, base + adapter and the merged model from their S3 prefixes; ask held-back prompts"):
            calls = S3Calls()
            s3 = calls.watch(aws.client("s3"))
            sagemaker = aws.client("sagemaker")
            described = {m: sagemaker.describe_model_package(ModelPackageName=a) for m, a in packages.items()}
            prefix = {m: package_prefix(d) for m, d in described.items()}
            mounts = run_dir / "mounts"
            base_mount = mount(s3, environment.bucket, base["model_data_prefix"], mounts / "model")
            adapter_mount = mount(s3, environment.bucket, prefix["adapter"], mounts / "adapters" / "dolly")
            merged_mount = mount(s3, environment.bucket, prefix["merged"], mounts / "merged")
            prompts = [(_prompt(q), q["response"]) for q in held_back[: args.prompts]]
            report.answers = serve_and_compare(base_mount, adapter_mount, merged_mount, prompts, args.max_new_tokens)
            report.s3_during_serving = calls.operations
            agree = sum(a.agree for a in report.answers)
            print(
                f"   base + adapter and merged agree on {agree}/{len(report.answers)} prompts; S3 operations: "
                f"{sorted(set(calls.operations))}, writes: {calls.writes or 'none'}"
            )
    with step(f"held-out loss of base, base + adapter and merged on the {HELD_OUT} held-back records"):
        max_seq_length = int(HYPERPARAMETERS["max_seq_length"])
        report.held_out = held_out.compare(base_mount, adapter_mount, merged_mount, held_back, max_seq_length)
        report.held_back = HELD_OUT
        for name, result in report.held_out.items():
            print(f"   {name:8} {result.loss:.4f} over {result.tokens} response tokens")
    for mode, opt_ml in runs.items():
        report.curves[mode] = opt_ml / "output" / "data" / "loss_curve.png"
        report.losses[mode] = losses(opt_ml)
    path = report.write(args.workdir / "report")
    print(closing_note(json.loads((path.parent / "report.json").read_text()), path))
    return path


def closing_note(summary: dict[str, Any], path: Path) -> str:
    """The held-out table, the first answer row, and where the report is."""
    held = summary["held_out"]
    lines = [
        "",
        f"held-out loss ({held['records']} of {held['held_back']} held-back dolly records, {held['tokens']} "
        "response tokens):",
        *(f"   {model:15} {loss:>8}  perplexity {ppl}" for model, loss, ppl in held_out_rows(summary)),
        "",
        answer_line(summary["answers"][0]),
        "",
        f"report: {path} (report.md and report.json beside it); total {summary['total_seconds']:.0f} s",
    ]
    return "\n".join(lines)


def _prompt(record: dict[str, Any]) -> str:
    from loraops_trainer.data import format_prompt

    return format_prompt(record["instruction"], record.get("context", ""))


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        run(args)
    except KeyboardInterrupt:
        print("\ninterrupted: the emulator was stopped", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
