"""A fine-tune as in AWS: the dataset uploaded, ``loraops finetune start`` (the workflow creates the training job),
the job run here as SageMaker runs it, and the job's event delivered to the register-finetune function."""

from __future__ import annotations

import hashlib
import json
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from demo.command import loraops
from demo.functions import invoke
from demo.local_aws import CREDENTIALS, LocalAWS
from demo.training_job import run_training_job

if TYPE_CHECKING:
    from demo.environment import DemoEnvironment

DATASET = "databricks-dolly-15k"
#: Trainer settings sized for a laptop CPU and the stand-in model; the rest are the trainer's own defaults. A model this
#: small takes a high learning rate; LoRA r32 on every linear layer, no dropout and gradients clipped at 1.0 let 100
#: steps (about three epochs) show it.
HYPERPARAMETERS = {
    "quantization": "none",  # bitsandbytes' 4-bit path is proven on CUDA (tests/training/test_gpu.py); CPU: LoRA
    "tokens_per_step": "2048",
    "max_seq_length": "256",
    "lora_r": "32",
    "lora_alpha": "64",
    "lora_dropout": "0.0",
    "learning_rate": "0.01",
    "warmup_steps": "4",
    "max_grad_norm": "1.0",
    "logging_steps": "2",
    "activation_checkpointing": "false",
    "sample_generations": "0",
    "max_dropped_fraction": "0.5",
}


def upload_dataset(aws: LocalAWS, environment: DemoEnvironment, data: bytes) -> str:
    from loraops import s3_layout

    prefix = s3_layout.dataset_prefix(DATASET, "sha256:" + hashlib.sha256(data).hexdigest())
    aws.client("s3").put_object(Bucket=environment.bucket, Key=prefix + "train.jsonl", Body=data)
    return s3_layout.s3_uri(environment.bucket, prefix)


def finetune(
    aws: LocalAWS, environment: DemoEnvironment, model_id: str, mode: str, training_uri: str, steps: int, workdir: Path
) -> tuple[dict[str, Any], Path]:
    """``loraops finetune start`` (the workflow creates the job), then the job run here; returns its event."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    hps = [f"--hp={k}={v}" for k, v in {**HYPERPARAMETERS, "max_steps": str(steps)}.items()]
    started = json.loads(
        loraops(
            aws,
            environment,
            "finetune",
            "start",
            "--model-id",
            model_id,
            "--training-uri",
            training_uri,
            "--mode",
            mode,
            "--dataset",
            DATASET,
            "--workflow-arn",
            environment.workflow_arn,
            *hps,
            "--json",
            show=False,
        )
    )
    job = started["job_name"]
    wait_for_execution(aws, started["execution_arn"])
    print(f"   workflow execution SUCCEEDED; training job {job} created with the base package's prefix as channel")
    opt_ml = workdir / "opt_ml" / job
    columns = (TextColumn(f"   {mode:8}"), BarColumn(), MofNCompleteColumn(), TextColumn("steps"), TimeElapsedColumn())
    with Progress(*columns) as progress:
        task = progress.add_task(job, total=steps)
        event = run_training_job(aws, job, opt_ml, lambda step, total: progress.update(task, completed=step))
    return event, opt_ml


def wait_for_execution(aws: LocalAWS, arn: str) -> None:
    stepfunctions = aws.client("stepfunctions")
    for _ in range(300):
        execution = stepfunctions.describe_execution(executionArn=arn)
        if execution["status"] != "RUNNING":
            if execution["status"] != "SUCCEEDED":
                raise SystemExit(f"workflow execution {execution['status']}: {execution.get('cause', '')}")
            return
        time.sleep(0.1)
    raise SystemExit(f"workflow execution {arn} did not end")


def register(aws: LocalAWS, environment: DemoEnvironment, event: dict[str, Any]) -> str:
    """Deliver the job's event to the register-finetune function, with the environment its stack gives it."""
    result = invoke(
        "register_finetune",
        event,
        {
            **CREDENTIALS,
            "AWS_ENDPOINT_URL": aws.url,
            "ARTIFACT_BUCKET": environment.bucket,
            "APPROVAL": environment.config.approval,
            "IDEMPOTENCY_TABLE": environment.idempotency_table,
            "POWERTOOLS_SERVICE_NAME": "loraops-register-finetune",
            "POWERTOOLS_LOGGER_LOG_EVENT": "false",
            "POWERTOOLS_LOG_LEVEL": "WARNING",
        },
    )
    if not result.get("registered"):
        raise SystemExit(f"register-finetune refused {event['detail']['TrainingJobName']}: {result.get('reason')}")
    print(f"   registered {result['package_arn']} (v{result['version']})")
    return result["package_arn"]


def package_prefix(description: dict[str, Any]) -> str:
    """The S3 prefix (without the bucket) a described model package serves its model data from."""
    uri = description["InferenceSpecification"]["Containers"][0]["ModelDataSource"]["S3DataSource"]["S3Uri"]
    return uri.split("/", 3)[3]
