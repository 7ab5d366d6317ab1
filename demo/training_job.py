"""Run a training job the way SageMaker runs it, on this machine.

The emulator creates the job (the fine-tune workflow's ``createTrainingJob``) but runs nothing. This does what the
SageMaker platform does with the job's description: download each input channel's S3 prefix to
``<opt/ml>/input/data/<channel>/``, write ``<opt/ml>/input/config/hyperparameters.json``, start the container's
entry point (``training_container/train.py``) with SageMaker's environment variables, and upload ``<opt/ml>/model``
uncompressed to ``<S3OutputPath><job>/output/model/``. ``<opt/ml>`` is a folder under the demo's work directory,
standing for the container's ``/opt/ml``.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from demo.s3_folders import download_prefix, upload_folder

ROOT = Path(__file__).resolve().parents[1]
ENTRY_POINT = ROOT / "training_container" / "train.py"
#: Threads of the training container (``OMP_NUM_THREADS``) unless the environment sets them.
THREADS = 1


class JobFailed(RuntimeError):
    """The container exited non-zero; the message is its failure reason."""


def run_training_job(
    aws: Any, job_name: str, opt_ml: Path, on_step: Callable[[int, int], None] | None = None
) -> dict[str, Any]:
    """Run ``job_name`` as described in the emulator; returns the EventBridge event SageMaker would send."""
    sagemaker, s3 = aws.client("sagemaker"), aws.client("s3")
    job = sagemaker.describe_training_job(TrainingJobName=job_name)
    environment = container_environment(job_name, opt_ml, os.environ)
    for channel in job["InputDataConfig"]:
        name = channel["ChannelName"]
        download_prefix(s3, channel["DataSource"]["S3DataSource"]["S3Uri"], opt_ml / "input" / "data" / name)
        environment[f"SM_CHANNEL_{name.upper()}"] = str(opt_ml / "input" / "data" / name)
    hyperparameters = opt_ml / "input" / "config" / "hyperparameters.json"
    hyperparameters.parent.mkdir(parents=True, exist_ok=True)
    hyperparameters.write_text(json.dumps(job.get("HyperParameters", {})))
    command = [
        sys.executable,
        str(ENTRY_POINT),
        "--hyperparameters-file",
        str(hyperparameters),
        "--checkpoint_dir",  # the job's CheckpointConfig.LocalPath, /opt/ml/checkpoints in the container
        str(opt_ml / "checkpoints"),
    ]
    _run(command, environment, opt_ml, int(job.get("HyperParameters", {}).get("max_steps", 0)), on_step)
    output = f"{job['OutputDataConfig']['S3OutputPath']}{job_name}/output/model/"
    upload_folder(s3, opt_ml / "model", output)
    tags = sagemaker.list_tags(ResourceArn=job["TrainingJobArn"]).get("Tags", [])
    return training_job_event(job, output, {t["Key"]: t["Value"] for t in tags})


def container_environment(job_name: str, opt_ml: Path, inherited: Mapping[str, str]) -> dict[str, str]:
    """The training container's variables: ``inherited`` and SageMaker's ``SM_*`` ones (channels added later).

    One thread (``OMP_NUM_THREADS``) unless ``inherited`` sets it: on the stand-in's small matrices a second thread
    mostly spins on a busy 2-core machine (load average about 11: 100 steps took 79 CPU-seconds on one thread;
    42 steps took 139 on two)."""
    return {
        "OMP_NUM_THREADS": str(THREADS),
        **inherited,
        "TRAINING_JOB_NAME": job_name,
        "SM_MODEL_DIR": str(opt_ml / "model"),
        "SM_OUTPUT_DATA_DIR": str(opt_ml / "output" / "data"),
        "SM_NUM_GPUS": "0",
        "LORAOPS_FAILURE_FILE": str(opt_ml / "output" / "failure"),
    }


def _run(command: list[str], environment: dict, opt_ml: Path, steps: int, on_step) -> None:
    log = opt_ml / "output" / "container.log"
    log.parent.mkdir(parents=True, exist_ok=True)
    metrics = opt_ml / "output" / "data" / "metrics.jsonl"
    with open(log, "w") as handle:
        process = subprocess.Popen(command, env=environment, stdout=handle, stderr=subprocess.STDOUT, cwd=opt_ml)
        try:
            while process.poll() is None:
                time.sleep(0.5)
                if on_step and metrics.is_file():
                    lines = metrics.read_text().splitlines()
                    on_step(json.loads(lines[-1]).get("step", 0) if lines else 0, steps)
        finally:  # Ctrl-C or any failure here: the container stops too
            if process.poll() is None:
                process.terminate()
                process.wait(timeout=30)
    if process.returncode != 0:
        failure = opt_ml / "output" / "failure"
        reason = failure.read_text().strip() if failure.is_file() else log.read_text()[-2000:]
        raise JobFailed(f"training container exited {process.returncode}: {reason} (log: {log})")
    if on_step:
        on_step(steps, steps)


def training_job_event(job: dict[str, Any], model_uri: str, tags: dict[str, str]) -> dict[str, Any]:
    """The EventBridge event of a completed job (the shape SageMaker sends; the uncompressed output's prefix)."""
    return {
        "version": "0",
        "id": f"demo-{job['TrainingJobName']}",
        "detail-type": "SageMaker Training Job State Change",
        "source": "aws.sagemaker",
        "account": job["TrainingJobArn"].split(":")[4],
        "time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "region": job["TrainingJobArn"].split(":")[3],
        "resources": [job["TrainingJobArn"]],
        "detail": {
            "TrainingJobName": job["TrainingJobName"],
            "TrainingJobArn": job["TrainingJobArn"],
            "TrainingJobStatus": "Completed",
            "ModelArtifacts": {"S3ModelArtifacts": model_uri},
            "OutputDataConfig": job["OutputDataConfig"],
            "Tags": tags,
        },
    }
