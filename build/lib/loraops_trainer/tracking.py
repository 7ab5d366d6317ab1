"""Experiment tracking as a transformers ``TrainerCallback``.

Always writes ``metrics.jsonl`` (one JSON object per log event) and ``loss_curve.png``. Also logs to
SageMaker Experiments inside a training job when an experiment name is set (the job's own trial
component ``<job>-aws-training-job`` is associated with a trial of that experiment), and to MLflow
when a tracking URI is configured. A backend that fails is logged and switched off: tracking never
stops training.
"""

from __future__ import annotations

import json
import logging
import math
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Protocol

from transformers import TrainerCallback

logger = logging.getLogger(__name__)

METRICS_FILE = "metrics.jsonl"
LOSS_CURVE_FILE = "loss_curve.png"
_METRICS_PER_CALL = 10  # BatchPutMetrics accepts at most 10 metrics per call


class Backend(Protocol):
    name: str

    def start(self, params: dict[str, Any]) -> None: ...
    def log_metrics(self, step: int, metrics: dict[str, float]) -> None: ...
    def log_artifacts(self, files: list[Path]) -> None: ...
    def finish(self) -> None: ...


def _numbers(values: dict[str, Any]) -> dict[str, float]:
    return {
        k: float(v)
        for k, v in values.items()
        if isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(float(v))
    }


class SageMakerExperimentsBackend:
    """SageMaker Experiments through boto3: parameters, per-step metrics and artifact locations."""

    name = "sagemaker-experiments"

    def __init__(
        self,
        job_name: str,
        experiment_name: str,
        artifact_s3_uri: str = "",
        sagemaker_client: Any = None,
        metrics_client: Any = None,
    ) -> None:
        import boto3

        self.job_name = job_name
        self.experiment_name = experiment_name
        self.trial_name = f"{experiment_name}-{job_name}"[:120]
        self.trial_component = f"{job_name}-aws-training-job"
        self.artifact_s3_uri = artifact_s3_uri.rstrip("/")
        self.sm = sagemaker_client or boto3.client("sagemaker")
        self.metrics = metrics_client or boto3.client("sagemaker-metrics")

    def _create(self, call: Any, **kwargs: Any) -> None:
        try:
            call(**kwargs)
        except self.sm.exceptions.ResourceInUse:
            pass  # created by an earlier job of the same experiment

    def start(self, params: dict[str, Any]) -> None:
        self._create(self.sm.create_experiment, ExperimentName=self.experiment_name)
        self._create(self.sm.create_trial, TrialName=self.trial_name, ExperimentName=self.experiment_name)
        self.sm.associate_trial_component(TrialComponentName=self.trial_component, TrialName=self.trial_name)
        parameters = {
            k: {"NumberValue": float(v)}
            if isinstance(v, (int, float)) and not isinstance(v, bool)
            else {"StringValue": str(v)[:2500]}
            for k, v in params.items()
        }
        self.sm.update_trial_component(TrialComponentName=self.trial_component, Parameters=parameters)

    def log_metrics(self, step: int, metrics: dict[str, float]) -> None:
        now = datetime.now(UTC)
        data = [{"MetricName": k, "Timestamp": now, "Step": step, "Value": v} for k, v in metrics.items()]
        for i in range(0, len(data), _METRICS_PER_CALL):
            self.metrics.batch_put_metrics(
                TrialComponentName=self.trial_component, MetricData=data[i : i + _METRICS_PER_CALL]
            )

    def log_artifacts(self, files: list[Path]) -> None:
        if not self.artifact_s3_uri:
            return
        artifacts = {f.name: {"Value": f"{self.artifact_s3_uri}/{f.name}"} for f in files}
        self.sm.update_trial_component(TrialComponentName=self.trial_component, OutputArtifacts=artifacts)

    def finish(self) -> None:
        pass


class MLflowBackend:
    """MLflow: a run per job with parameters, step metrics, the evaluation and the artifacts.

    Not transformers' ``MLflowCallback`` (``report_to="mlflow"``): it ends the run in ``on_train_end``, before
    loraops evaluates and logs the reports, and an unreachable server raises out of it and stops training.
    """

    name = "mlflow"

    def __init__(self, tracking_uri: str, experiment_name: str, run_name: str) -> None:
        import mlflow

        self.mlflow = mlflow
        mlflow.set_tracking_uri(tracking_uri)
        mlflow.set_experiment(experiment_name or "loraops")
        self.run_name = run_name

    def start(self, params: dict[str, Any]) -> None:
        self.mlflow.start_run(run_name=self.run_name)
        self.mlflow.log_params({k: str(v)[:500] for k, v in params.items()})

    def log_metrics(self, step: int, metrics: dict[str, float]) -> None:
        self.mlflow.log_metrics(metrics, step=step)

    def log_artifacts(self, files: list[Path]) -> None:
        for file in files:
            self.mlflow.log_artifact(str(file))

    def finish(self) -> None:
        self.mlflow.end_run()


class TrackingCallback(TrainerCallback):
    """Writes metrics.jsonl and the loss curve; forwards everything to the configured backends."""

    def __init__(self, output_dir: Path, params: dict[str, Any], backends: list[Backend] | None = None) -> None:
        self.output_dir = Path(output_dir)
        self.params = params
        self.backends = list(backends or [])
        self.metrics_path = self.output_dir / METRICS_FILE
        self.history: list[dict[str, Any]] = []

    def _call(self, method: str, *args: Any) -> None:
        for backend in list(self.backends):
            try:
                getattr(backend, method)(*args)
            except Exception as error:  # noqa: BLE001 - tracking must never stop training
                logger.warning(
                    "tracking backend %s failed in %s (%s: %s); it is switched off",
                    backend.name,
                    method,
                    type(error).__name__,
                    error,
                )
                self.backends.remove(backend)

    def on_train_begin(self, args, state, control, **kwargs):
        if not state.is_world_process_zero:
            return
        self.output_dir.mkdir(parents=True, exist_ok=True)
        self._call("start", self.params)

    def on_log(self, args, state, control, logs=None, **kwargs):
        if not state.is_world_process_zero or not logs:
            return
        metrics = _numbers(logs)
        record = {"step": state.global_step, "epoch": state.epoch, "time": time.time(), **metrics}
        self.history.append(record)
        with open(self.metrics_path, "a", encoding="utf-8") as handle:
            handle.write(json.dumps(record) + "\n")
        self._call("log_metrics", state.global_step, metrics)

    def on_epoch_end(self, args, state, control, **kwargs):
        if state.is_world_process_zero and state.log_history:
            last = state.log_history[-1]
            if "loss" in last:
                self._call("log_metrics", state.global_step, {"epoch_train_loss": float(last["loss"])})

    def log_final(self, metrics: dict[str, float], step: int) -> None:
        """Evaluation results after training."""
        record = {"step": step, "time": time.time(), **_numbers(metrics)}
        with open(self.metrics_path, "a", encoding="utf-8") as handle:
            handle.write(json.dumps(record) + "\n")
        self._call("log_metrics", step, _numbers(metrics))

    def finish(self, artifacts: list[Path]) -> None:
        plot = write_loss_curve(self.metrics_path, self.output_dir / LOSS_CURVE_FILE)
        self._call("log_artifacts", [p for p in [*artifacts, self.metrics_path, plot] if p and p.exists()])
        self._call("finish")


def write_loss_curve(metrics_path: Path, png_path: Path) -> Path | None:
    """Train (and eval) loss against step, from metrics.jsonl."""
    if not metrics_path.exists():
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = [json.loads(line) for line in metrics_path.read_text().splitlines() if line.strip()]
    train = [(r["step"], r["loss"]) for r in rows if "loss" in r]
    evals = [(r["step"], r["eval_loss"]) for r in rows if "eval_loss" in r]
    fig, ax = plt.subplots(figsize=(7, 4), dpi=100)
    if train:
        ax.plot(*zip(*train), label="train loss")
    if evals:
        ax.plot(*zip(*evals), "o-", label="validation loss")
    ax.set_xlabel("step")
    ax.set_ylabel("loss")
    ax.set_title("loraops fine-tune")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(png_path)
    plt.close(fig)
    return png_path


def backends_from_environment(
    job_name: str | None, experiment_name: str, mlflow_uri: str, artifact_s3_uri: str = ""
) -> list[Backend]:
    """SageMaker Experiments inside a job with an experiment name; MLflow with a tracking URI."""
    backends: list[Backend] = []
    if job_name and experiment_name:
        try:
            backends.append(SageMakerExperimentsBackend(job_name, experiment_name, artifact_s3_uri))
        except Exception as error:  # noqa: BLE001
            logger.warning("SageMaker Experiments unavailable (%s); not tracking there", error)
    if mlflow_uri:
        try:
            backends.append(MLflowBackend(mlflow_uri, experiment_name, job_name or "local"))
        except Exception as error:  # noqa: BLE001
            logger.warning("MLflow unavailable (%s); not tracking there", error)
    return backends
