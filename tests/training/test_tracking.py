"""Experiment tracking: SageMaker Experiments calls (validated against the real API model), MLflow,
metrics.jsonl and the loss curve, and failures that never stop training."""

from __future__ import annotations

import json
import logging

import boto3
from botocore.config import Config
from botocore.stub import ANY, Stubber
from transformers import TrainerControl, TrainerState

from loraops_trainer.tracking import MLflowBackend, SageMakerExperimentsBackend, TrackingCallback


def _clients():
    """Real boto3 clients; the Stubber below checks every request against the SageMaker API model.
    (The local AWS emulator does not implement SageMaker Experiments or sagemaker-metrics.)"""
    kwargs = dict(
        region_name="us-east-1",
        aws_access_key_id="test",
        aws_secret_access_key="test",
        config=Config(retries={"max_attempts": 1}),
    )
    return boto3.client("sagemaker", **kwargs), boto3.client("sagemaker-metrics", **kwargs)


def _state(step: int) -> TrainerState:
    state = TrainerState()
    state.global_step, state.epoch = step, step / 10
    return state


def test_sagemaker_experiments_requests():
    sm, metrics = _clients()
    with Stubber(sm) as sm_stub, Stubber(metrics) as metrics_stub:
        sm_stub.add_response("create_experiment", {"ExperimentArn": "arn:x"}, {"ExperimentName": "dolly"})
        sm_stub.add_client_error(
            "create_trial", "ResourceInUse", expected_params={"TrialName": "dolly-job-1", "ExperimentName": "dolly"}
        )
        sm_stub.add_response(
            "associate_trial_component",
            {},
            {"TrialComponentName": "job-1-aws-training-job", "TrialName": "dolly-job-1"},
        )
        sm_stub.add_response(
            "update_trial_component",
            {},
            {
                "TrialComponentName": "job-1-aws-training-job",
                "Parameters": {
                    "lora_r": {"NumberValue": 64.0},
                    "quantization": {"StringValue": "nf4"},
                    "gradient_checkpointing": {"StringValue": "True"},
                },
            },
        )
        metrics_stub.add_response(
            "batch_put_metrics",
            {},
            {
                "TrialComponentName": "job-1-aws-training-job",
                "MetricData": [{"MetricName": "loss", "Timestamp": ANY, "Step": 10, "Value": 1.5}],
            },
        )
        sm_stub.add_response(
            "update_trial_component",
            {},
            {
                "TrialComponentName": "job-1-aws-training-job",
                "OutputArtifacts": {"metrics.jsonl": {"Value": "s3://b/adapters/g/job-1/output/model/metrics.jsonl"}},
            },
        )

        backend = SageMakerExperimentsBackend(
            "job-1", "dolly", "s3://b/adapters/g/job-1/output/model/", sagemaker_client=sm, metrics_client=metrics
        )
        backend.start({"lora_r": 64, "quantization": "nf4", "gradient_checkpointing": True})
        backend.log_metrics(10, {"loss": 1.5})
        from pathlib import Path

        backend.log_artifacts([Path("/tmp/metrics.jsonl")])
        sm_stub.assert_no_pending_responses()
        metrics_stub.assert_no_pending_responses()


def test_metrics_are_sent_ten_per_call():
    sm, metrics = _clients()
    with Stubber(metrics) as stub:
        for _ in range(2):
            stub.add_response("batch_put_metrics", {}, {"TrialComponentName": "j-aws-training-job", "MetricData": ANY})
        backend = SageMakerExperimentsBackend("j", "e", sagemaker_client=sm, metrics_client=metrics)
        backend.log_metrics(1, {f"m{i}": float(i) for i in range(12)})
        stub.assert_no_pending_responses()


class _Broken:
    name = "broken"

    def start(self, params):
        raise ConnectionError("endpoint unreachable")


class _Recorder:
    name = "recorder"

    def __init__(self):
        self.calls = []

    def start(self, params):
        self.calls.append(("start", params))

    def log_metrics(self, step, metrics):
        self.calls.append(("metrics", step, metrics))

    def log_artifacts(self, files):
        self.calls.append(("artifacts", sorted(f.name for f in files)))

    def finish(self):
        self.calls.append(("finish",))


def test_failing_backend_is_switched_off_and_others_continue(tmp_path, caplog):
    recorder = _Recorder()
    callback = TrackingCallback(tmp_path, {"lora_r": 8}, [_Broken(), recorder])
    args, control = None, TrainerControl()
    with caplog.at_level(logging.WARNING):
        callback.on_train_begin(args, _state(0), control)
        callback.on_log(args, _state(2), control, logs={"loss": 2.5, "learning_rate": 1e-4, "note": "text"})
        callback.on_log(args, _state(4), control, logs={"loss": 2.0})
        callback.finish([])
    assert "tracking backend broken failed in start (ConnectionError: endpoint unreachable)" in caplog.text
    assert [c[0] for c in recorder.calls] == ["start", "metrics", "metrics", "artifacts", "finish"]
    assert recorder.calls[1] == ("metrics", 2, {"loss": 2.5, "learning_rate": 1e-4})
    assert recorder.calls[3] == ("artifacts", ["loss_curve.png", "metrics.jsonl"])
    rows = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert [(r["step"], r["loss"]) for r in rows] == [(2, 2.5), (4, 2.0)]
    assert (tmp_path / "loss_curve.png").read_bytes()[:4] == b"\x89PNG"


def test_mlflow_run_with_params_metrics_and_artifacts(tmp_path, monkeypatch):
    import mlflow

    monkeypatch.setenv("MLFLOW_ALLOW_FILE_STORE", "true")  # a local store; jobs point at a tracking server

    uri = (tmp_path / "mlruns").as_uri()
    callback = TrackingCallback(tmp_path / "reports", {"lora_r": 8}, [MLflowBackend(uri, "loraops-test", "job-7")])
    control = TrainerControl()
    callback.on_train_begin(None, _state(0), control)
    callback.on_log(None, _state(1), control, logs={"loss": 3.0})
    callback.on_log(None, _state(2), control, logs={"loss": 2.0})
    callback.finish([])
    mlflow.set_tracking_uri(uri)
    runs = mlflow.search_runs(experiment_names=["loraops-test"], output_format="list")
    assert len(runs) == 1
    run = runs[0]
    assert run.info.run_name == "job-7" and run.data.params["lora_r"] == "8"
    history = mlflow.MlflowClient(uri).get_metric_history(run.info.run_id, "loss")
    assert [(m.step, m.value) for m in history] == [(1, 3.0), (2, 2.0)]
    artifacts = {a.path for a in mlflow.MlflowClient(uri).list_artifacts(run.info.run_id)}
    assert {"metrics.jsonl", "loss_curve.png"} <= artifacts
