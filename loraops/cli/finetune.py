"""``loraops finetune start | status``: start the fine-tune workflow of an environment, and follow it."""

from __future__ import annotations

import argparse
import json
import os

from loraops.cli.common import (
    CLIError,
    UsageError,
    add_registry_options,
    client,
    emit,
    open_registry,
    registry_errors,
)
from loraops.naming import OutputMode


def add_commands(nouns) -> None:
    finetune = nouns.add_parser("finetune", help="fine-tune jobs").add_subparsers(
        dest="verb", metavar="{start,status}", help="what to do"
    )
    start = finetune.add_parser("start", help="fine-tune the newest approved base through the workflow")
    start.add_argument("--model-id", required=True, help="the base model, e.g. meta-llama/Llama-2-7b-hf")
    start.add_argument("--training-uri", required=True, help="s3:// JSONL file or prefix (dolly format)")
    start.add_argument("--validation-uri", default="", help="optional; else the trainer splits the training data")
    start.add_argument(
        "--mode",
        choices=[m.value for m in OutputMode],
        default=OutputMode.ADAPTER.value,
        help="keep the fine-tune as a separate adapter or merged into the base",
    )
    start.add_argument("--dataset", default="databricks-dolly-15k", help="dataset slug (sourceDataset, group name)")
    start.add_argument("--task", default="instruction-following", help="task slug (adapter group name)")
    start.add_argument(
        "--hp",
        action="append",
        default=[],
        metavar="NAME=VALUE",
        help="a trainer setting (loraops-train --help lists them), checked before the job starts; repeat",
    )
    start.add_argument(
        "--no-hp-check",
        action="store_true",
        help="skip checking --hp here (the job checks them; use where the trainer's dependencies are absent)",
    )
    start.add_argument("--instance-type", default="ml.g5.2xlarge", help="training instance type")
    start.add_argument("--instance-count", type=int, default=1, help="training instances (data parallel)")
    start.add_argument("--spot", action="store_true", help="managed spot training (resumes from checkpoints)")
    start.add_argument("--max-runtime-hours", type=float, default=24.0, help="the job's stopping condition")
    _workflow_option(start)
    add_registry_options(start)
    start.set_defaults(run=start_finetune)
    status = finetune.add_parser("status", help="the workflow execution's state and its training job's")
    status.add_argument("execution_arn", help="the workflow execution's ARN (finetune start prints it)")
    add_registry_options(status)
    status.set_defaults(run=finetune_status)


def _workflow_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--workflow-arn",
        default=os.environ.get("LORAOPS_WORKFLOW_ARN"),
        help="the environment's fine-tune state machine ($LORAOPS_WORKFLOW_ARN; output FineTuneWorkflowArn of "
        "the workflow stack)",
    )


@registry_errors
def start_finetune(args: argparse.Namespace) -> int:
    from loraops.finetune import (
        FineTuneError,
        FineTuneRequest,
        HyperparameterError,
        parse_hyperparameters,
        validate_hyperparameters,
    )

    if not args.workflow_arn:
        raise CLIError("name the fine-tune workflow (--workflow-arn or LORAOPS_WORKFLOW_ARN)")
    try:
        hyperparameters = parse_hyperparameters(args.hp)
    except FineTuneError as error:
        raise UsageError(str(error)) from None
    if not args.no_hp_check:
        try:
            validate_hyperparameters(hyperparameters)
        except HyperparameterError as error:
            raise UsageError(str(error)) from None
    request = FineTuneRequest(
        model_id=args.model_id,
        training_uri=args.training_uri,
        validation_uri=args.validation_uri,
        output_mode=OutputMode(args.mode),
        dataset=args.dataset,
        task=args.task,
        hyperparameters=hyperparameters,
        instance_type=args.instance_type,
        instance_count=args.instance_count,
        spot=args.spot,
        max_runtime_hours=args.max_runtime_hours,
    )
    base = open_registry(args).check_finetune_target(request.package_group, request.output_mode, request.model_id)
    execution_input = request.execution_input(args.bucket)
    started = client(args, "stepfunctions").start_execution(
        stateMachineArn=args.workflow_arn, name=execution_input["job_name"], input=json.dumps(execution_input)
    )
    result = {
        "execution_arn": started["executionArn"],
        "job_name": execution_input["job_name"],
        "package_group": request.package_group,
        "base_package": base.arn,
    }
    emit(args, result, lambda r: "\n".join(f"{k}: {v}" for k, v in r.items()))
    return 0


@registry_errors
def finetune_status(args: argparse.Namespace) -> int:
    execution = client(args, "stepfunctions").describe_execution(executionArn=args.execution_arn)
    job_name = json.loads(execution.get("input") or "{}").get("job_name", "")
    result = {"execution": execution["status"], "job_name": job_name, "job": "", "failure": ""}
    if job_name:
        sagemaker = client(args, "sagemaker")
        try:
            job = sagemaker.describe_training_job(TrainingJobName=job_name)
            result.update(job=job["TrainingJobStatus"], failure=job.get("FailureReason", ""))
        except sagemaker.exceptions.ResourceNotFound:
            result["job"] = "not started"
    if execution["status"] == "FAILED":
        result["failure"] = result["failure"] or f"{execution.get('error', '')}: {execution.get('cause', '')}"
    emit(args, result, lambda r: "\n".join(f"{k}: {v}" for k, v in r.items() if v))
    return 0
