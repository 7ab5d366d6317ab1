"""The training entry point end to end on CPU: outputs, loading with plain libraries, lineage, resume."""

from __future__ import annotations

import json
import re
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
    fast_args,
    run_train,
    train_in_process,
)

RANK = 8


#: What a SageMaker hyperparameter tuning job writes into hyperparameters.json besides the static hyperparameters: the
#: tuned values as plain strings, its own ``_tuning_*`` keys, and the workflow's launch setting.
TUNING_JOB_HYPERPARAMETERS = {
    "learning_rate": "0.001",
    "lora_alpha": "16",
    "_tuning_objective_metric": "validation_loss",
    "sagemaker_torch_distributed_enabled": "true",
}


@pytest.fixture(scope="module")
def both(tiny_base, tmp_path_factory) -> tuple[Path, dict, str]:
    """One run of the real entry point, as a SageMaker tuning job starts it (hyperparameters.json with the tuning
    job's keys, the toolkit's flags), writing both outputs; shared below."""
    folder = tmp_path_factory.mktemp("both")
    hyperparameters = folder / "hyperparameters.json"
    hyperparameters.write_text(json.dumps(TUNING_JOB_HYPERPARAMETERS))
    out = folder / "model"
    # the training toolkit also passes every hyperparameter it does not hold for its own as a flag
    toolkit_flags = [
        item
        for name, value in TUNING_JOB_HYPERPARAMETERS.items()
        if not name.startswith("sagemaker_") and name != "_tuning_objective_metric"
        for item in (f"--{name}", value)
    ]
    args = fast_args(tiny_base, out, output_mode="both", lora_r=RANK)
    result = run_train([*args, "--hyperparameters-file", str(hyperparameters), *toolkit_flags])
    assert result.returncode == 0, result.stderr[-3000:]
    return out, json.loads(result.stdout.strip().splitlines()[-1])["metrics"], result.stdout


def test_a_tuning_job_can_train_and_read_its_objective(both):
    """The tuning job's own hyperparameters are accepted, and each final metric is printed where the job's metric
    definitions (the objective among them) read it."""
    from infra.workflow import METRIC_DEFINITIONS

    _, metrics, stdout = both
    for definition in METRIC_DEFINITIONS:
        (value,) = re.findall(definition["Regex"], stdout)
        assert float(value) == metrics[definition["Name"]]
    assert TUNING_JOB_HYPERPARAMETERS["_tuning_objective_metric"] in {d["Name"] for d in METRIC_DEFINITIONS}


def test_run_reports_metrics(both):
    _, metrics, _ = both
    assert metrics["global_step"] == 6 and metrics["skipped_nonfinite_steps"] == 0
    assert metrics["validation_loss"] > 0 and metrics["perplexity"] > 1


def test_adapter_loads_with_plain_peft_and_merged_with_plain_transformers(tiny_base, both):
    from transformers import AutoModelForCausalLM

    out, _, _ = both
    base = AutoModelForCausalLM.from_pretrained(str(tiny_base), dtype=torch.float32).eval()
    assert_merged_equals_base_plus_adapter(base, out, "cpu")


def test_adapter_is_bf16_with_rank_arithmetic_size(tiny_base, both):
    """Each adapted Linear(in, out) adds r*(in+out) parameters, stored as 2-byte bf16."""
    from transformers import AutoModelForCausalLM

    out, _, _ = both
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
    out, _, _ = both
    adapter_config = json.loads((out / "adapter" / "adapter_config.json").read_text())
    assert adapter_config["base_model_name_or_path"] == "meta-llama/Llama-2-7b-hf"
    assert str(tiny_base) not in (out / "adapter" / "adapter_config.json").read_text()
    card = (out / "adapter" / "README.md").read_text()  # the model card PEFT writes
    assert "base_model: meta-llama/Llama-2-7b-hf" in card and str(tiny_base) not in card


def test_merged_is_bf16_shards_with_tokenizer(both):
    out, _, _ = both
    config = json.loads((out / "merged" / "config.json").read_text())
    assert config["dtype"] == "bfloat16"
    assert (out / "merged" / "tokenizer.json").exists() and (out / "adapter" / "tokenizer.json").exists()
    assert sorted(p.name for p in out.iterdir()) == ["adapter", "merged"]
    assert not [p for p in out.parent.iterdir() if "staging" in p.name]


def test_manifests_match_files_and_base(tiny_base, both):
    out, metrics, _ = both
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
        assert 0 < training["samples_trained"] < training["samples"]  # 6 steps cover part of the channel
        assert manifest.metrics["train_samples"] == training["samples_trained"]
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


def _adapter(folder: Path) -> dict:
    return load_file(str(folder / "adapter_model.safetensors"))


def test_resume_from_the_last_or_newest_complete_checkpoint_is_bitwise_identical(tiny_base, tmp_path, capsys):
    """Run to the end (mid-epoch). Resume from its last checkpoint (as a SIGTERM during the final write leaves it):
    no step more. Cut the last checkpoint short (as a kill mid-save would): it resumes from the one before. Both
    end at the same step and ship the very same adapter, with the loss of every step."""
    checkpoints = tmp_path / "checkpoints"
    common = dict(
        checkpoint_dir=checkpoints,
        max_steps=8,
        save_steps=4,
        logging_steps=3,
        output_mode="adapter",
        sample_generations=0,
        validation_fraction=0,
    )
    code, first, err = train_in_process(fast_args(tiny_base, tmp_path / "first", **common), capsys)
    assert code == 0, err[-3000:]
    assert sorted(p.name for p in checkpoints.glob("checkpoint-*")) == ["checkpoint-4", "checkpoint-8"]

    code, at_end, err = train_in_process(fast_args(tiny_base, tmp_path / "at-end", **common), capsys)
    assert code == 0, err[-3000:]
    assert at_end["global_step"] == 8  # not one step more
    assert sorted(p.name for p in checkpoints.glob("checkpoint-*")) == ["checkpoint-4", "checkpoint-8"]
    assert f"resuming from {checkpoints / 'checkpoint-8'}: it holds the run's last step" in err

    (checkpoints / "checkpoint-8" / "trainer_state.json").unlink()  # the file the Trainer writes last
    code, second, err = train_in_process(fast_args(tiny_base, tmp_path / "second", **common), capsys)
    assert code == 0, err[-3000:]
    assert f"resuming from {checkpoints / 'checkpoint-4'}" in err
    for resumed, folder in ((at_end, "at-end"), (second, "second")):
        assert resumed["global_step"] == 8, folder
        # the mean over all 8 steps (logged at every checkpoint), not only over the steps since the resume
        assert resumed["train_loss"] == pytest.approx(first["train_loss"], rel=1e-6), folder
        assert resumed["train_samples"] == first["train_samples"], folder
        before, after = _adapter(tmp_path / "first"), _adapter(tmp_path / folder)
        assert before.keys() == after.keys() and all(torch.equal(before[k], after[k]) for k in before), folder
        Manifest.read(tmp_path / folder).verify(tmp_path / folder)


def test_the_manifest_counts_the_samples_and_tokens_trained_not_the_channel(tiny_base, tmp_path, capsys, monkeypatch):
    """Three steps of one micro-batch train the first three micro-batches the collator builds (accelerate's loader
    builds one ahead, which is not trained): those samples and tokens are what the manifest counts."""
    from loraops_trainer import run
    from loraops_trainer.packing import PackedCollator

    built: list[list[list[int]]] = []

    class Recording(PackedCollator):
        def __call__(self, batch):
            built.append([sample.input_ids for group in batch for sample in group])
            return super().__call__(batch)

    monkeypatch.setattr(run, "PackedCollator", Recording)
    out = tmp_path / "out"
    args = fast_args(tiny_base, out, max_steps=3, output_mode="adapter", sample_generations=0, validation_fraction=0)
    code, metrics, err = train_in_process(args, capsys)
    assert code == 0, err[-3000:]
    trained = [ids for micro_batch in built[:3] for ids in micro_batch]
    training = Manifest.read(out).data["training"]
    assert training["samples_trained"] == len(trained) < training["samples"]
    assert metrics["train_tokens"] == sum(len(ids) for ids in trained)


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
        max_steps=2,
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
    code, _, err = train_in_process(
        fast_args(tiny_base, out, output_mode="merged", sample_generations=0, max_steps=2), capsys
    )
    assert code == 0, err[-3000:]
    assert not (out / "adapter_config.json").exists() and not (out / "adapter").exists()
    manifest = Manifest.read(out)
    assert manifest.output_mode is OutputMode.MERGED
    manifest.verify(out)
    AutoModelForCausalLM.from_pretrained(str(out))
