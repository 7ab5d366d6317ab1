"""The training entry point end to end on CPU: outputs, loading with plain libraries, lineage, resume."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file

from loraops.manifest import Manifest, ManifestError, folder_weights_digest
from loraops.naming import OutputMode
from tests.helpers import (
    assert_merged_equals_base_plus_adapter,
    assert_nf4_merge_is_faithful,
    fast_args,
    run_train,
    train_in_process,
)

RANK = 8


@pytest.fixture(scope="module")
def both(tiny_base, tmp_path_factory) -> tuple[Path, dict]:
    """One run of the real entry point, as SageMaker starts it, writing both outputs; shared below."""
    out = tmp_path_factory.mktemp("both") / "model"
    result = run_train(fast_args(tiny_base, out, output_mode="both", lora_r=RANK))
    assert result.returncode == 0, result.stderr[-3000:]
    return out, json.loads(result.stdout.strip().splitlines()[-1])["metrics"]


def test_run_reports_metrics(both):
    _, metrics = both
    assert metrics["global_step"] == 6 and metrics["skipped_nonfinite_steps"] == 0
    assert metrics["validation_loss"] > 0 and metrics["perplexity"] > 1


def test_adapter_loads_with_plain_peft_and_merged_with_plain_transformers(tiny_base, both):
    from transformers import AutoModelForCausalLM

    out, _ = both
    base = AutoModelForCausalLM.from_pretrained(str(tiny_base), dtype=torch.float32).eval()
    assert_merged_equals_base_plus_adapter(base, out, "cpu")


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


def test_adapter_config_names_the_hub_id_not_the_local_path(tiny_base, both):
    out, _ = both
    adapter_config = json.loads((out / "adapter" / "adapter_config.json").read_text())
    assert adapter_config["base_model_name_or_path"] == "meta-llama/Llama-2-7b-hf"
    assert str(tiny_base) not in (out / "adapter" / "adapter_config.json").read_text()


def test_merged_is_bf16_shards_with_tokenizer(both):
    out, _ = both
    config = json.loads((out / "merged" / "config.json").read_text())
    assert config["dtype"] == "bfloat16"
    assert (out / "merged" / "tokenizer.json").exists() and (out / "adapter" / "tokenizer.json").exists()
    assert sorted(p.name for p in out.iterdir()) == ["adapter", "merged"]
    assert not [p for p in out.parent.iterdir() if "staging" in p.name]


def test_manifests_match_files_and_base(tiny_base, both):
    out, metrics = both
    for mode in OutputMode:
        manifest = Manifest.read(out / mode.value)
        manifest.verify(out / mode.value)
        assert manifest.output_mode is mode
        assert manifest.base_weights_digest == folder_weights_digest(tiny_base)
        assert manifest.dataset_digest.startswith("sha256:") and len(manifest.dataset_digest) == 71
        training, validation = manifest.data["training"], manifest.data["validation"]
        # 577 records: a 5% validation split (29), the rest read for training; long prompts dropped and counted
        assert training["records_read"] + validation["records_read"] == 577 and validation["records_read"] == 29
        for channel in (training, validation):
            dropped = channel["dropped"]["prompt_longer_than_max_seq_length"]
            assert channel["samples"] + dropped == channel["records_read"]
        assert manifest.hyperparameters["lora_r"] == RANK and manifest.hyperparameters["learning_rate"] == 1e-3
        assert "base_model_dir" not in manifest.hyperparameters
        assert manifest.metrics["validation_loss"] == pytest.approx(metrics["validation_loss"])
        assert manifest.code_version.startswith("loraops ")
        for report in ("evaluation.json", "metrics.jsonl", "loss_curve.png", "samples.json"):
            assert report in manifest.files, report
    evaluation = json.loads((out / "adapter" / "evaluation.json").read_text())
    assert set(evaluation["language_modeling_metrics"]) == {"validation_loss", "perplexity", "train_loss"}
    assert (out / "adapter" / "loss_curve.png").read_bytes()[:4] == b"\x89PNG"
    steps = [json.loads(line) for line in (out / "adapter" / "metrics.jsonl").read_text().splitlines()]
    assert [s["step"] for s in steps if "loss" in s] == [2, 4, 6]


def test_manifest_detects_a_changed_file(both, tmp_path):
    copy = tmp_path / "adapter"
    shutil.copytree(both[0] / "adapter", copy)
    (copy / "adapter_config.json").write_text("{}")
    with pytest.raises(ManifestError, match=r"changed \['adapter_config.json'\]"):
        Manifest.read(copy).verify(copy)


def test_resume_from_the_newest_complete_checkpoint_is_bitwise_identical(tiny_base, tmp_path, capsys):
    """Run to the end; cut the newest checkpoint short (as a kill mid-save would); resume into a new model
    folder: it resumes from the checkpoint before, ends at the same step and ships the very same adapter."""
    checkpoints = tmp_path / "checkpoints"
    common = dict(checkpoint_dir=checkpoints, max_steps=20, save_steps=5, output_mode="adapter", sample_generations=0)
    code, first, err = train_in_process(fast_args(tiny_base, tmp_path / "first", **common), capsys)
    assert code == 0, err[-3000:]
    assert sorted(p.name for p in checkpoints.glob("checkpoint-*")) == ["checkpoint-15", "checkpoint-20"]
    (checkpoints / "checkpoint-20" / "trainer_state.json").unlink()  # the file the Trainer writes last

    code, second, err = train_in_process(fast_args(tiny_base, tmp_path / "second", **common), capsys)
    assert code == 0, err[-3000:]
    assert f"resuming from {checkpoints / 'checkpoint-15'}" in err
    assert second["global_step"] == 20
    # covers all 20 steps (the log window cut by the resume moves it slightly), not only the 5 resumed ones
    assert second["train_loss"] == pytest.approx(first["train_loss"], rel=1e-3)
    before = load_file(str(tmp_path / "first" / "adapter_model.safetensors"))
    after = load_file(str(tmp_path / "second" / "adapter_model.safetensors"))
    assert before.keys() == after.keys() and all(torch.equal(before[k], after[k]) for k in before)
    Manifest.read(tmp_path / "second").verify(tmp_path / "second")


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


def test_nf4_quantized_training_and_merge_on_cpu(tiny_base, tmp_path, capsys):
    """The QLoRA path itself (bitsandbytes NF4) on CPU: train, then merge into the de-quantized base."""
    out = tmp_path / "out"
    code, _, err = train_in_process(
        fast_args(tiny_base, out, quantization="nf4", output_mode="both", learning_rate=1e-2), capsys
    )
    assert code == 0, err[-3000:]
    assert_nf4_merge_is_faithful(tiny_base, out, "cpu")


def test_unreachable_tracking_never_stops_training(tiny_base, tmp_path, monkeypatch, capsys):
    """Inside a 'job' whose SageMaker endpoint is unreachable: a warning, training finishes, MLflow still logs."""
    import mlflow

    mlruns = (tmp_path / "mlruns").as_uri()
    for key, value in dict(
        TRAINING_JOB_NAME="job-offline",
        AWS_ENDPOINT_URL="http://127.0.0.1:9",
        AWS_ACCESS_KEY_ID="test",
        AWS_SECRET_ACCESS_KEY="test",
        AWS_DEFAULT_REGION="us-east-1",
        AWS_MAX_ATTEMPTS="1",
        MLFLOW_TRACKING_URI=mlruns,
        MLFLOW_ALLOW_FILE_STORE="true",
    ).items():
        monkeypatch.setenv(key, value)
    args = fast_args(
        tiny_base,
        tmp_path / "out",
        checkpoint_dir=tmp_path / "ckpt",
        experiment_name="dolly-offline",
        output_mode="adapter",
        sample_generations=0,
    )
    code, _, err = train_in_process(args, capsys)
    assert code == 0, err[-3000:]
    assert "tracking backend sagemaker-experiments failed in start" in err
    mlflow.set_tracking_uri(mlruns)
    (run,) = mlflow.search_runs(experiment_names=["dolly-offline"], output_format="list")
    assert run.info.run_name == "job-offline" and "loss" in run.data.metrics and "eval_loss" in run.data.metrics


def test_merged_only_output_is_a_plain_model_folder(tiny_base, tmp_path, capsys):
    from transformers import AutoModelForCausalLM

    out = tmp_path / "out"
    code, _, err = train_in_process(fast_args(tiny_base, out, output_mode="merged", sample_generations=0), capsys)
    assert code == 0, err[-3000:]
    assert not (out / "adapter_config.json").exists() and not (out / "adapter").exists()
    manifest = Manifest.read(out)
    assert manifest.output_mode is OutputMode.MERGED
    manifest.verify(out)
    AutoModelForCausalLM.from_pretrained(str(out))
