"""Hyperparameters: SageMaker file + CLI + environment, typed and validated."""

from __future__ import annotations

import json

import pytest

from loraops_trainer.config import ConfigError, build_config, load_config, parse_bool

REQUIRED = ["--base_model_dir", "/b", "--train_path", "/t", "--model_dir", "/m"]


@pytest.mark.parametrize("text, expected", [("False", False), ("false", False), ("0", False), ("no", False),
                                             ("True", True), ("1", True), ("yes", True)])
def test_booleans_parse_properly(text, expected):
    assert parse_bool("x", text) is expected


def test_false_string_is_false_not_truthy():
    """The reference recipe's `type=bool` turned '--merge_weights False' into True; this must not."""
    config = load_config([*REQUIRED, "--gradient_checkpointing", "False", "--double-quant", "false"], environ={})
    assert config.gradient_checkpointing is False and config.double_quant is False


def test_bad_boolean_names_the_hyperparameter():
    with pytest.raises(ConfigError, match="hyperparameter 'gradient_checkpointing': expected true/false, got 'maybe'"):
        load_config([*REQUIRED, "--gradient_checkpointing", "maybe"], environ={})


def test_sagemaker_channels_and_hyperparameters_file(tmp_path):
    hp = tmp_path / "hyperparameters.json"
    # SageMaker writes every value as a JSON string, plus entries of its own.
    hp.write_text(json.dumps({"lora_r": "16", "learning_rate": "0.0001", "output_mode": "both",
                              "sagemaker_program": "train.py"}))
    env = {"SM_CHANNEL_BASE": "/opt/ml/input/data/base", "SM_CHANNEL_TRAINING": "/opt/ml/input/data/training",
           "SM_MODEL_DIR": "/opt/ml/model", "TRAINING_JOB_NAME": "job-1"}
    config = load_config(["--hyperparameters-file", str(hp), "--lora-r", "32"], environ=env)
    assert config.base_model_dir == "/opt/ml/input/data/base"
    assert config.train_path == "/opt/ml/input/data/training"
    assert config.lora_r == 32  # the CLI wins over the file
    assert config.learning_rate == 1e-4 and config.output_mode == "both"
    assert config.checkpoint_dir == "/opt/ml/checkpoints"  # inside a job, checkpoints go where SageMaker syncs them


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--lora_r", "0"], "hyperparameter 'lora_r': must be > 0"),
        (["--lora_r", "1.5"], "hyperparameter 'lora_r': expected int, got '1.5'"),
        (["--output_mode", "zip"], "hyperparameter 'output_mode': expected one of adapter, merged, both"),
        (["--quantization", "fp4"], "hyperparameter 'quantization': expected one of nf4, int8, none"),
        (["--tokens_per_step", "100"], "hyperparameter 'tokens_per_step': must be >= max_seq_length"),
        (["--lora_dropout", "1"], r"hyperparameter 'lora_dropout': must be in \[0, 1\)"),
        (["--merge_weights", "False"], r"unknown argument\(s\) \['--merge_weights', 'False'\]"),
    ],
)
def test_invalid_hyperparameters(args, message):
    with pytest.raises(ConfigError, match=message):
        load_config([*REQUIRED, *args], environ={})


def test_unknown_key_in_hyperparameters_file(tmp_path):
    hp = tmp_path / "hp.json"
    hp.write_text(json.dumps({"lora_rank": "8"}))
    with pytest.raises(ConfigError, match=r"unknown hyperparameter\(s\) \['lora_rank'\]"):
        load_config([*REQUIRED, "--hyperparameters-file", str(hp)], environ={})


def test_missing_required_location():
    with pytest.raises(ConfigError, match="hyperparameter 'base_model_dir' is required .*SM_CHANNEL_BASE"):
        load_config(["--train_path", "/t", "--model_dir", "/m"], environ={})


def test_target_modules_and_categories():
    config = build_config({"lora_target_modules": "q_proj, v_proj", "categories": "open_qa,closed_qa"})
    assert config.target_modules == ["q_proj", "v_proj"]
    assert config.category_filter == ["open_qa", "closed_qa"]
    assert build_config({}).target_modules == "all-linear"


def test_idle_gpus_are_reported():
    from loraops_trainer.run import idle_gpu_warning

    assert idle_gpu_warning({}) is None
    assert idle_gpu_warning({"SM_NUM_GPUS": "4", "LOCAL_WORLD_SIZE": "4"}) is None
    message = idle_gpu_warning({"SM_NUM_GPUS": "4"})
    assert message.startswith("SM_NUM_GPUS=4 but 1 training process(es) on this host: 3 GPU(s) idle")
