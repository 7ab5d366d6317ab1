"""The trainer under faults: nothing unsound is ever published, and every failure says why, in one line."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from loraops_trainer.guards import FINGERPRINT_FILE, TrainingFault, claim_checkpoint_dir, run_fingerprint
from tests.helpers import DOLLY, TRAIN_SCRIPT, fast_args, train_in_process, until_stopped_args, wait_until_training


@pytest.fixture
def failure_file(tmp_path, monkeypatch) -> Path:
    path = tmp_path / "output" / "failure"
    path.parent.mkdir()
    monkeypatch.setenv("LORAOPS_FAILURE_FILE", str(path))
    return path


def _nothing_published(model_dir: Path) -> bool:
    staging = [p for p in model_dir.parent.iterdir() if ".loraops-staging" in p.name]
    return not staging and (not model_dir.exists() or not any(model_dir.iterdir()))


def test_diverged_run_fails_and_publishes_nothing(tiny_base, tmp_path, failure_file, capsys):
    out = tmp_path / "model"
    code, metrics, err = train_in_process(fast_args(tiny_base, out, learning_rate=1e30, max_steps=8), capsys)
    assert code == 2 and metrics is None
    assert "non-finite loss or gradient at optimizer step" in err and "the run diverged" in err
    assert failure_file.read_text().startswith("non-finite loss or gradient at optimizer step")
    assert _nothing_published(out)


def test_divergence_that_leaves_finite_weights_is_named(tiny_base, tmp_path, failure_file, capsys):
    """One step at a huge learning rate: the weights stay finite, the validation loss does not."""
    out = tmp_path / "model"
    args = fast_args(tiny_base, out, learning_rate=1e30, max_steps=1, sample_generations=0, output_mode="adapter")
    code, metrics, err = train_in_process(args, capsys)
    assert code == 2 and metrics is None
    (line,) = [line for line in err.splitlines() if line.startswith("train: error:")]
    assert "after training: the run diverged" in line and "JSON" not in line, line
    assert failure_file.read_text() == line.removeprefix("train: error: ")
    assert _nothing_published(out)


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (
            {"lora_target_modules": "nonexistent_proj"},
            r"hyperparameter 'lora_target_modules': the base model has no "
            r"linear layer named \['nonexistent_proj'\]",
        ),
        ({"merged_shard_size": "foo"}, "hyperparameter 'merged_shard_size': expected a size such as 2GB"),
        ({"train_path": "MISSING"}, "no such file or folder"),
        ({"categories": "poetry"}, r"no records in categories \['poetry'\]"),
        ({"base_model_dir": "EMPTY"}, "not a Hugging Face model folder"),
        ({"base_model_dir": "NO_WEIGHTS"}, r"no weight files \(\.safetensors, \.bin\)"),
        ({"seed": -1}, r"hyperparameter 'seed': must be in \[0, 2\*\*32\)"),
        ({"checkpoint_dir": "INSIDE"}, r"hyperparameter 'checkpoint_dir': .*/model/checkpoints is inside model_dir"),
        ({"output_data_dir": "INSIDE"}, r"hyperparameter 'output_data_dir': .*/model/checkpoints is inside model_dir"),
        (
            {"max_seq_length": 64, "max_dropped_fraction": 0.05},
            r"training data .*: \d+ of \d+ records .* have a "
            r"prompt longer than max_seq_length=64",
        ),
    ],
)
def test_bad_input_fails_before_training_with_one_line_and_the_failure_file(
    tiny_base, tmp_path, failure_file, capsys, overrides, message
):
    no_weights = tmp_path / "no-weights"
    no_weights.mkdir()
    (no_weights / "config.json").write_text((tiny_base / "config.json").read_text())
    out = tmp_path / "model"
    places = {
        "MISSING": tmp_path / "nope.jsonl",
        "EMPTY": tmp_path / "output",
        "NO_WEIGHTS": no_weights,
        "INSIDE": out / "checkpoints",
    }
    code, _, err = train_in_process(
        fast_args(tiny_base, out, **{k: places.get(v, v) for k, v in overrides.items()}), capsys
    )
    assert code == 2
    (line,) = [line for line in err.splitlines() if line.startswith("train: error:")]
    assert __import__("re").search(message, line), err[-2000:]
    assert "Traceback" not in err and "{'train_runtime'" not in err  # failed before training started
    assert failure_file.read_text() == line.removeprefix("train: error: ")
    assert _nothing_published(out)


def test_validation_error_names_the_file(tiny_base, tmp_path, capsys):
    validation = tmp_path / "validation.jsonl"
    validation.write_text(json.dumps({"instruction": "word " * 400, "response": "x"}) + "\n")
    code, _, err = train_in_process(
        fast_args(
            tiny_base, tmp_path / "model", validation_path=validation, max_seq_length=64, max_dropped_fraction=1.0
        ),
        capsys,
    )
    assert code == 2
    assert f"train: error: validation data {validation}: no sample fits max_seq_length=64" in err


def test_non_empty_model_folder_is_refused_before_training(tiny_base, tmp_path, failure_file, capsys):
    out = tmp_path / "model"
    out.mkdir()
    (out / "old-adapter_model.safetensors").write_bytes(b"from an earlier run")
    code, _, err = train_in_process(fast_args(tiny_base, out), capsys)
    assert code == 2
    assert f"model_dir {out} is not empty (1 entries: old-adapter_model.safetensors)" in err
    assert sorted(p.name for p in out.iterdir()) == ["old-adapter_model.safetensors"]


def test_nf4_on_cpu_trains_evaluates_and_merges_odd_shapes(tmp_path, capsys):
    from loraops_trainer.synthetic_base import ODD, build_base_model, dolly_texts

    base = build_base_model(tmp_path / "odd-base", dolly_texts(DOLLY), ODD)
    out = tmp_path / "model"
    code, metrics, err = train_in_process(
        fast_args(base, out, quantization="nf4", output_mode="both", max_steps=4, learning_rate=1e-2), capsys
    )
    assert code == 0, err[-3000:]
    assert metrics["validation_loss"] > 0
    from tests.helpers import assert_nf4_merge_is_faithful

    assert_nf4_merge_is_faithful(base, out, "cpu")


def test_checkpoints_of_another_run_are_not_resumed(tiny_base, tmp_path, capsys):
    checkpoints = tmp_path / "checkpoints"
    code, _, err = train_in_process(
        fast_args(tiny_base, tmp_path / "first", checkpoint_dir=checkpoints, save_steps=3, sample_generations=0), capsys
    )
    assert code == 0, err[-2000:]
    other_data = tmp_path / "other.jsonl"
    other_data.write_text("\n".join(DOLLY.read_text().splitlines()[100:400]) + "\n")
    out = tmp_path / "second"
    code, _, err = train_in_process(
        fast_args(tiny_base, out, checkpoint_dir=checkpoints, save_steps=3, train_path=other_data, lora_r=4), capsys
    )
    assert code == 2
    (line,) = [line for line in err.splitlines() if line.startswith("train: error:")]
    assert f"checkpoint_dir {checkpoints} holds checkpoints of a different run: dataset_digest" in line
    assert "lora_r (8 -> 4)" in line
    assert _nothing_published(out)


def test_kill_mid_write_leaves_nothing_and_the_next_run_cleans_up(tmp_path):
    """SIGKILL while the artifact is being written: the model folder stays empty; the leftover staging
    folder (outside the model folder) is removed by the next publish."""
    model_dir = tmp_path / "model"
    script = (
        "import os, signal, sys\n"
        "from pathlib import Path\n"
        "from loraops_trainer.publish import staged\n"
        "with staged(Path(sys.argv[1])) as staging:\n"
        "    (staging / 'adapter_model.safetensors').write_bytes(b'half of it')\n"
        "    os.kill(os.getpid(), signal.SIGKILL)\n"
    )
    result = subprocess.run([sys.executable, "-c", script, str(model_dir)], capture_output=True, timeout=120)
    assert result.returncode == -signal.SIGKILL
    assert not model_dir.exists()
    assert [p.name for p in tmp_path.iterdir()] == [
        f".loraops-staging-model-{p.name.rsplit('-', 1)[1]}" for p in tmp_path.iterdir()
    ]

    from loraops_trainer.publish import staged

    with staged(model_dir) as staging:
        (staging / "adapter_model.safetensors").write_bytes(b"whole")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model"]
    assert (model_dir / "adapter_model.safetensors").read_bytes() == b"whole"


def test_cleanup_leaves_staging_folders_of_other_model_folders_and_of_live_runs(tmp_path):
    """Only ``.loraops-staging-<model>-<pid>`` of an exited process is a leftover: not the staging folder of a model
    folder whose name starts alike (``model-2``), nor one whose process still runs."""
    from loraops_trainer.publish import staged

    exited = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    dead_pid = int(exited.stdout)
    running = subprocess.Popen([sys.executable, "-c", "import sys; sys.stdin.read()"], stdin=subprocess.PIPE)
    try:
        kept = [f".loraops-staging-model-2-{dead_pid}", f".loraops-staging-model-{running.pid}"]
        for name in [*kept, f".loraops-staging-model-{dead_pid}"]:
            (tmp_path / name).mkdir()
        with staged(tmp_path / "model") as staging:
            (staging / "adapter_model.safetensors").write_bytes(b"whole")
        assert sorted(p.name for p in tmp_path.iterdir()) == sorted([*kept, "model"])
    finally:
        running.communicate(input=b"", timeout=120)


def test_an_error_while_writing_removes_the_staging_folder(tmp_path):
    from loraops_trainer.publish import staged

    model_dir = tmp_path / "model"
    with pytest.raises(OSError, match="No space left"):
        with staged(model_dir) as staging:
            (staging / "adapter_model.safetensors").write_bytes(b"half")
            raise OSError("No space left on device")
    assert list(tmp_path.iterdir()) == []


def test_mount_point_model_folder_is_filled_manifest_last(tmp_path, monkeypatch):
    """SageMaker local mode mounts /opt/ml/model, which a rename cannot replace. os.path.ismount is the one
    thing mocked here: creating a real mount point needs privileges a test does not have."""
    from loraops_trainer import publish

    model_dir = tmp_path / "model"
    model_dir.mkdir()
    monkeypatch.setattr(publish.os.path, "ismount", lambda path: Path(path) == model_dir)
    moved: list[str] = []
    real_rename = Path.rename
    monkeypatch.setattr(Path, "rename", lambda self, target: (moved.append(self.name), real_rename(self, target))[1])
    with publish.staged(model_dir) as staging:
        assert staging.parent == model_dir
        (staging / "adapter").mkdir()
        for name in ("adapter/loraops-manifest.json", "adapter/adapter_model.safetensors", "adapter/config.json"):
            (staging / name).write_text(name)
    assert moved[-1] == "loraops-manifest.json"
    assert sorted(p.name for p in model_dir.iterdir()) == ["adapter"]
    assert len(list((model_dir / "adapter").iterdir())) == 3


def test_sigterm_saves_a_checkpoint_exits_non_zero_and_publishes_nothing(tiny_base, tmp_path):
    """What StopTrainingJob and a spot reclaim send: the run checkpoints, fails with the reason, and a rerun
    resumes from that checkpoint."""
    checkpoints, out, failure = tmp_path / "checkpoints", tmp_path / "model", tmp_path / "failure"
    args = until_stopped_args(tiny_base, out, checkpoints, tmp_path / "reports")
    env = dict(os.environ, LORAOPS_FAILURE_FILE=str(failure))
    process = subprocess.Popen(
        [sys.executable, str(TRAIN_SCRIPT), *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env
    )
    wait_until_training(process, tmp_path / "reports")
    process.send_signal(signal.SIGTERM)
    _, err = process.communicate(timeout=300)
    assert process.returncode == 2, err[-3000:]
    assert "train: error: stopped by SIGTERM at step" in err
    assert failure.read_text().startswith("stopped by SIGTERM at step")
    saved = [p for p in checkpoints.glob("checkpoint-*") if (p / "trainer_state.json").is_file()]
    assert len(saved) == 1 and int(saved[0].name.split("-")[1]) < 100_000
    assert _nothing_published(out)


def test_a_checkpoint_fingerprinted_under_the_old_checkpointing_name_still_resumes(tmp_path):
    """Fingerprints written before the rename record ``gradient_checkpointing``; the same run resumes, a changed
    value is still refused."""
    new = run_fingerprint({"activation_checkpointing": True, "lora_r": 8}, "sha256:b", "sha256:d")
    (tmp_path / FINGERPRINT_FILE).write_text(
        json.dumps({**new, "settings": {"gradient_checkpointing": True, "lora_r": 8}})
    )
    claim_checkpoint_dir(tmp_path, new, has_checkpoints=True)
    changed = run_fingerprint({"activation_checkpointing": False, "lora_r": 8}, "sha256:b", "sha256:d")
    with pytest.raises(TrainingFault, match=r"activation_checkpointing \(True -> False\)"):
        claim_checkpoint_dir(tmp_path, changed, has_checkpoints=True)
