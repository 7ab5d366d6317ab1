"""The training entry point end to end on CPU: outputs, loading with plain libraries, lineage, resume."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors import safe_open

from loraops.manifest import MANIFEST_FILE, Manifest, folder_weights_digest
from tests.training.conftest import DOLLY, TRAIN_SCRIPT, fast_args, run_train

RANK = 8


@pytest.fixture(scope="module")
def both(tiny_base, tmp_path_factory) -> tuple[Path, dict]:
    """One run writing adapter and merged outputs; shared by the tests below."""
    out = tmp_path_factory.mktemp("both")
    result = run_train(fast_args(tiny_base, out, output_mode="both", lora_r=RANK))
    assert result.returncode == 0, result.stderr[-3000:]
    return out, json.loads(result.stdout.strip().splitlines()[-1])["metrics"]


def test_run_reports_metrics(both):
    _, metrics = both
    assert metrics["global_step"] == 6
    assert metrics["validation_loss"] > 0 and metrics["perplexity"] > 1


def test_adapter_loads_with_plain_peft_and_merged_with_plain_transformers(tiny_base, both):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    out, _ = both
    base = AutoModelForCausalLM.from_pretrained(str(tiny_base), dtype=torch.float32)
    ids = torch.randint(3, 500, (2, 40))
    with torch.no_grad():
        base_logits = base(input_ids=ids).logits
        expected = PeftModel.from_pretrained(base, str(out / "adapter")).eval()(input_ids=ids).logits
        merged = AutoModelForCausalLM.from_pretrained(str(out / "merged"), dtype=torch.float32).eval()
        actual = merged(input_ids=ids).logits
    assert "quantization_config" not in merged.config.to_dict()
    effect = (expected - base_logits).abs().max().item()
    error = (expected - actual).abs().max().item()
    assert effect > 1e-3, "the adapter should change the model"
    assert error < 0.1 * effect, f"merged differs from base+adapter by {error} (adapter effect {effect})"


def test_adapter_is_bf16_with_rank_arithmetic_size(tiny_base, both):
    """Each adapted Linear(in, out) adds r*(in+out) parameters, stored as 2-byte bf16."""
    from transformers import AutoModelForCausalLM

    out, _ = both
    base = AutoModelForCausalLM.from_pretrained(str(tiny_base))
    linears = [m for name, m in base.named_modules() if isinstance(m, torch.nn.Linear) and "lm_head" not in name]
    expected = sum(RANK * (m.in_features + m.out_features) for m in linears)
    path = out / "adapter" / "adapter_model.safetensors"
    with safe_open(str(path), "pt") as f:
        tensors = {k: f.get_tensor(k) for k in f.keys()}
    assert {t.dtype for t in tensors.values()} == {torch.bfloat16}
    assert sum(t.numel() for t in tensors.values()) == expected
    header = path.stat().st_size - 2 * expected
    assert 0 < header < 16_384  # the rest is the safetensors JSON header


def test_merged_is_bf16_shards_with_tokenizer(both):
    out, _ = both
    config = json.loads((out / "merged" / "config.json").read_text())
    assert config["dtype"] == "bfloat16"
    assert (out / "merged" / "tokenizer.json").exists() and (out / "adapter" / "tokenizer.json").exists()
    assert not (out / ".partial").exists()


def test_manifests_match_files_and_base(tiny_base, both):
    out, metrics = both
    for mode in ("adapter", "merged"):
        manifest = Manifest.read(out / mode)
        manifest.verify(out / mode)
        assert manifest.output_mode == mode
        assert manifest.base_weights_digest == folder_weights_digest(tiny_base)
        assert manifest.dataset_digest.startswith("sha256:")
        # the 5% validation split, and records whose prompt alone exceeds max_seq_length=256, are not trained on
        assert 300 < manifest.dataset_records < 577 and manifest.validation_records == 29
        assert manifest.hyperparameters["lora_r"] == RANK
        assert manifest.metrics["validation_loss"] == pytest.approx(metrics["validation_loss"])
        for report in ("evaluation.json", "metrics.jsonl", "loss_curve.png", "samples.json"):
            assert report in manifest.files, report
    evaluation = json.loads((out / "adapter" / "evaluation.json").read_text())
    assert set(evaluation["language_modeling_metrics"]) == {"validation_loss", "perplexity", "train_loss"}
    assert (out / "adapter" / "loss_curve.png").read_bytes()[:4] == b"\x89PNG"
    steps = [json.loads(line) for line in (out / "adapter" / "metrics.jsonl").read_text().splitlines()]
    assert [s["step"] for s in steps if "loss" in s] == [2, 4, 6]


def test_manifest_detects_a_changed_file(both, tmp_path):
    import shutil

    copy = tmp_path / "adapter"
    shutil.copytree(both[0] / "adapter", copy)
    (copy / "adapter_config.json").write_text("{}")
    from loraops.manifest import ManifestError

    with pytest.raises(ManifestError, match=r"changed \['adapter_config.json'\]"):
        Manifest.read(copy).verify(copy)


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"train_path": "MISSING"}, "no such file or folder"),
        ({"categories": "poetry"}, r"no records in categories \['poetry'\]"),
        ({"lora_r": "-1"}, "hyperparameter 'lora_r': must be > 0"),
        ({"base_model_dir": "EMPTY"}, "not a Hugging Face model folder"),
        ({"base_model_dir": "NO_WEIGHTS"}, r"no weight files \(\.safetensors, \.bin\)"),
    ],
)
def test_bad_input_fails_clearly_and_writes_nothing(tiny_base, tmp_path, overrides, message):
    no_weights = tmp_path / "no-weights"
    no_weights.mkdir()
    (no_weights / "config.json").write_text((tiny_base / "config.json").read_text())
    places = {"MISSING": tmp_path / "nope.jsonl", "EMPTY": tmp_path, "NO_WEIGHTS": no_weights}
    resolved = {k: places.get(v, v) for k, v in overrides.items()}
    out = tmp_path / "out"
    result = run_train(fast_args(tiny_base, out, **resolved))
    assert result.returncode == 2
    assert "train: error:" in result.stderr
    assert __import__("re").search(message, result.stderr), result.stderr[-2000:]
    assert not out.exists() or not any(out.iterdir())


def test_malformed_line_is_reported_with_its_location(tiny_base, tmp_path):
    data = tmp_path / "train.jsonl"
    lines = DOLLY.read_text().splitlines()[:20]
    lines[7] = '{"instruction": "missing the response"}'
    data.write_text("\n".join(lines) + "\n")
    result = run_train(fast_args(tiny_base, tmp_path / "out", train_path=data))
    assert result.returncode == 2
    assert f"{data}:8: missing field 'response'" in result.stderr


def test_killed_run_resumes_from_its_last_checkpoint(tiny_base, tmp_path):
    """Kill the job after its first checkpoint; the rerun resumes there and ends at the same step count."""
    checkpoints, out = tmp_path / "checkpoints", tmp_path / "out"
    args = fast_args(tiny_base, out, checkpoint_dir=checkpoints, max_steps=40, save_steps=5,
                     output_mode="adapter", sample_generations=0)
    process = subprocess.Popen([sys.executable, str(TRAIN_SCRIPT), *args], stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE, text=True, start_new_session=True)
    deadline = time.time() + 300
    # trainer_state.json is the last file of a checkpoint: wait for one complete checkpoint, then kill.
    while not any(checkpoints.glob("checkpoint-*/trainer_state.json")) and time.time() < deadline \
            and process.poll() is None:
        time.sleep(0.05)
    os.killpg(process.pid, signal.SIGKILL)  # like a spot interruption: no chance to clean up
    process.communicate()
    saved = sorted(int(p.parent.name.split("-")[1]) for p in checkpoints.glob("checkpoint-*/trainer_state.json"))
    assert saved and saved[-1] < 40, f"expected to kill mid-run, checkpoints: {saved}"
    assert not (out / MANIFEST_FILE).exists()

    result = run_train(args)
    assert result.returncode == 0, result.stderr[-3000:]
    assert f"resuming from {checkpoints / f'checkpoint-{saved[-1]}'}" in result.stderr
    assert json.loads(result.stdout.strip().splitlines()[-1])["metrics"]["global_step"] == 40
    state = json.loads((checkpoints / "checkpoint-40" / "trainer_state.json").read_text())
    assert state["global_step"] == 40
    Manifest.read(out).verify(out)


def test_nf4_quantized_training_and_merge_on_cpu(tiny_base, tmp_path):
    """The QLoRA path itself (bitsandbytes NF4) on CPU: train, then merge into the de-quantized base."""
    from tests.training.test_gpu import assert_nf4_merge_is_faithful

    out = tmp_path / "out"
    result = run_train(fast_args(tiny_base, out, quantization="nf4", output_mode="both", learning_rate=1e-2))
    assert result.returncode == 0, result.stderr[-3000:]
    assert_nf4_merge_is_faithful(tiny_base, out, "cpu")


def test_runs_under_torchrun_with_two_processes(tiny_base, tmp_path):
    """DDP as SageMaker's torch_distributed launches it: data sharded, one artifact written by rank 0."""
    out = tmp_path / "out"
    command = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", "--master_port=29533",
               str(TRAIN_SCRIPT), *fast_args(tiny_base, out, output_mode="adapter", sample_generations=0)]
    result = subprocess.run(command, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    reports = [json.loads(line)["metrics"] for line in result.stdout.splitlines() if line.startswith('{"metrics"')]
    assert len(reports) == 2 and {r["global_step"] for r in reports} == {6}
    manifest = Manifest.read(out)
    manifest.verify(out)
    # Two processes consume two micro-batches per step: the epoch advances twice as fast as in one process.
    from loraops_trainer.config import load_config
    from loraops_trainer.packing import PackedDataset
    from loraops_trainer.run import load_tokenizer, prepare_data

    config = load_config(fast_args(tiny_base, out), environ={})
    bins = len(PackedDataset(prepare_data(config, load_tokenizer(str(tiny_base))).train, config.tokens_per_step,
                             config.seed))
    logged = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    last_train_log = [r for r in logged if "loss" in r][-1]
    assert last_train_log["step"] == 6
    assert last_train_log["epoch"] == pytest.approx(2 * 6 / bins, rel=1e-3)


def test_incomplete_checkpoint_is_skipped(tmp_path):
    """A checkpoint cut off before trainer_state.json (written last) is not resumed from."""
    from loraops_trainer.run import last_checkpoint

    assert last_checkpoint(str(tmp_path / "none")) is None
    (tmp_path / "checkpoint-5").mkdir()
    (tmp_path / "checkpoint-5" / "trainer_state.json").write_text('{"global_step": 5}')
    (tmp_path / "checkpoint-10").mkdir()
    (tmp_path / "checkpoint-10" / "adapter_model.safetensors").write_bytes(b"partial")
    (tmp_path / "checkpoint-12").mkdir()
    (tmp_path / "checkpoint-12" / "trainer_state.json").write_text('{"global_st')
    assert last_checkpoint(str(tmp_path)) == str(tmp_path / "checkpoint-5")


def test_unreachable_tracking_never_stops_training(tiny_base, tmp_path, monkeypatch):
    """Inside a 'job' whose SageMaker endpoint is unreachable: a warning, training finishes, MLflow still logs."""
    import mlflow

    mlruns = (tmp_path / "mlruns").as_uri()
    env = dict(os.environ, TRAINING_JOB_NAME="job-offline", AWS_ENDPOINT_URL="http://127.0.0.1:9",
               AWS_ACCESS_KEY_ID="test", AWS_SECRET_ACCESS_KEY="test", AWS_DEFAULT_REGION="us-east-1",
               AWS_MAX_ATTEMPTS="1", MLFLOW_TRACKING_URI=mlruns, MLFLOW_ALLOW_FILE_STORE="true")
    args = fast_args(tiny_base, tmp_path / "out", checkpoint_dir=tmp_path / "ckpt", experiment_name="dolly-offline",
                     output_mode="adapter", sample_generations=0)
    result = run_train(args, env=env)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "tracking backend sagemaker-experiments failed in start" in result.stderr
    monkeypatch.setenv("MLFLOW_ALLOW_FILE_STORE", "true")
    mlflow.set_tracking_uri(mlruns)
    (run,) = mlflow.search_runs(experiment_names=["dolly-offline"], output_format="list")
    assert run.info.run_name == "job-offline" and "loss" in run.data.metrics


def test_merged_only_output_is_a_plain_model_folder(tiny_base, tmp_path):
    from transformers import AutoModelForCausalLM

    out = tmp_path / "out"
    result = run_train(fast_args(tiny_base, out, output_mode="merged", sample_generations=0))
    assert result.returncode == 0, result.stderr[-3000:]
    assert not (out / "adapter_config.json").exists() and not (out / "adapter").exists()
    manifest = Manifest.read(out)
    assert manifest.output_mode == "merged"
    manifest.verify(out)
    AutoModelForCausalLM.from_pretrained(str(out))


def test_failed_write_leaves_no_artifact(tmp_path):
    """An error while saving (disk full, bad model) removes the half-written folder and keeps what was there."""
    from loraops_trainer.outputs import write_artifacts

    class FailingModel:  # stand-in: the point is the error path, not the model
        def save_pretrained(self, folder, **kwargs):
            (Path(folder) / "adapter_model.safetensors").write_bytes(b"half")
            raise OSError("No space left on device")

    out = tmp_path / "out"
    out.mkdir()
    (out / "previous.txt").write_text("kept")
    with pytest.raises(OSError, match="No space left"):
        write_artifacts(out, "both", FailingModel(), None, lambda mode: None, [], "2GB")
    assert sorted(p.name for p in out.iterdir()) == ["previous.txt"]
