"""Settings: SageMaker file + environment + CLI through HfArgumentParser, typed and validated in-process."""

from __future__ import annotations

import json
import subprocess
import sys
import warnings

import pytest

from loraops.naming import OutputMode
from loraops_trainer.hyperparameters import decode_sagemaker_value, load_settings
from loraops_trainer.settings import ConfigError, TrainConfig

REQUIRED = ["--base_model_dir", "/b", "--train_path", "/t", "--model_dir", "/m"]


@pytest.mark.parametrize(
    "text, expected",
    [
        ("False", False),
        ("false", False),
        ("0", False),
        ("no", False),
        ("f", False),
        ("True", True),
        ("1", True),
        ("yes", True),
        ("t", True),
    ],
)
def test_booleans_parse_properly(text, expected):
    settings = load_settings([*REQUIRED, "--double_quant", text], environ={})
    assert settings.config.double_quant is expected


def test_false_string_is_false_not_truthy():
    """The reference recipe's `type=bool` turned '--merge_weights False' into True; this must not."""
    settings = load_settings([*REQUIRED, "--activation_checkpointing", "False", "--double-quant", "false"], environ={})
    assert settings.training.activation_checkpointing is False and settings.config.double_quant is False


@pytest.mark.parametrize("value", [False, True])
def test_the_deprecated_gradient_checkpointing_alias_is_still_honoured(value):
    """transformers 5 reads ``gradient_checkpointing`` only where ``activation_checkpointing`` is unset, which
    loraops' default sets: a user's alias must still win over that default (transformers says it is deprecated)."""
    with pytest.warns(FutureWarning, match="`gradient_checkpointing` is deprecated"):
        settings = load_settings([*REQUIRED, "--gradient_checkpointing", str(value)], environ={})
    assert settings.training.activation_checkpointing is value
    assert settings.hyperparameters["activation_checkpointing"] is value


def test_loraops_own_settings_raise_no_deprecation_warning():
    """loraops' defaults and derived TrainingArguments use no name transformers deprecates (gradient_checkpointing
    printed a FutureWarning in every run)."""
    with warnings.catch_warnings():
        warnings.simplefilter("error", FutureWarning)
        warnings.simplefilter("error", DeprecationWarning)
        settings = load_settings(REQUIRED, environ={})
    assert settings.training.activation_checkpointing is True


def test_bad_boolean_names_the_hyperparameter():
    with pytest.raises(
        ConfigError, match="hyperparameter 'activation_checkpointing': Truthy value expected: got maybe"
    ):
        load_settings([*REQUIRED, "--activation_checkpointing", "maybe"], environ={})


def test_loraops_defaults_for_training_arguments():
    settings = load_settings(REQUIRED, environ={})
    training = settings.training
    assert (training.learning_rate, training.num_train_epochs, training.max_grad_norm) == (2e-4, 1.0, 0.3)
    assert training.lr_scheduler_type.value == "cosine" and training.activation_checkpointing is True
    assert training.per_device_train_batch_size == 1 and training.remove_unused_columns is False
    assert training.use_cpu is True  # without it, torchrun on CPU trains one unsynchronised copy per rank
    assert settings.config.output_modes == (OutputMode.ADAPTER,)
    assert settings.config.checkpoint_dir == "/m.checkpoints"  # kept beside the model folder, not in a temp dir
    assert settings.hyperparameters["learning_rate"] == 2e-4 and "model_dir" not in settings.hyperparameters
    json.dumps(settings.hyperparameters, allow_nan=False)


def test_sagemaker_channels_and_json_encoded_hyperparameters(tmp_path):
    """The SageMaker Python SDK JSON-encodes every value ('"both"', '64'); the file alone must be enough."""
    hp = tmp_path / "hyperparameters.json"
    hp.write_text(
        json.dumps(
            {
                "lora_r": "16",
                "learning_rate": "0.0001",
                "output_mode": json.dumps("both"),
                "double_quant": json.dumps(False),
                "sagemaker_program": "train.py",
            }
        )
    )
    env = {
        "SM_CHANNEL_BASE": "/opt/ml/input/data/base",
        "SM_CHANNEL_TRAINING": "/opt/ml/input/data/training",
        "SM_MODEL_DIR": "/opt/ml/model",
        "TRAINING_JOB_NAME": "job-1",
    }
    settings = load_settings(["--hyperparameters-file", str(hp), "--lora-r", "32"], environ=env)
    config = settings.config
    assert config.base_model_dir == "/opt/ml/input/data/base"
    assert config.train_path == "/opt/ml/input/data/training"
    assert config.lora_r == 32  # the CLI wins over the file
    assert settings.training.learning_rate == 1e-4 and config.output_mode == "both" and config.double_quant is False
    assert config.output_modes == (OutputMode.ADAPTER, OutputMode.MERGED)
    assert config.checkpoint_dir == "/opt/ml/checkpoints"  # inside a job, checkpoints go where SageMaker syncs them


def test_decoding_sagemaker_values():
    assert decode_sagemaker_value('"both"') == "both"
    assert decode_sagemaker_value("64") == "64"
    assert decode_sagemaker_value(True) == "true"
    assert decode_sagemaker_value("plain text") == "plain text"


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--lora_r", "0"], "hyperparameter 'lora_r': must be > 0"),
        (["--lora_r", "1.5"], "hyperparameter 'lora_r': invalid int value: '1.5'"),
        (["--output_mode", "zip"], "hyperparameter 'output_mode': invalid choice: 'zip'"),
        (["--quantization", "fp4"], "hyperparameter 'quantization': invalid choice: 'fp4'"),
        (["--tokens_per_step", "100"], "hyperparameter 'tokens_per_step': must be >= max_seq_length"),
        (["--lora_dropout", "1"], r"hyperparameter 'lora_dropout': must be in \[0, 1\)"),
        (["--merge_weights", "False"], r"unknown hyperparameter\(s\) \['--merge_weights', 'False'\]"),
        # the settings that once failed late, with a traceback, or not at all:
        (["--merged_shard_size", "foo"], "hyperparameter 'merged_shard_size': expected a size such as 2GB"),
        (["--num_train_epochs", "inf"], "hyperparameter 'num_train_epochs': must be a finite number, got inf"),
        (["--learning_rate", "inf"], "hyperparameter 'learning_rate': must be a finite number, got inf"),
        (["--learning_rate", "nan"], "hyperparameter 'learning_rate': must be a finite number, got nan"),
        (["--optim", "foo"], r"hyperparameter 'optim': invalid choice: 'foo' \(choose from 'adamw_torch'"),
        (["--warmup_steps", "-5"], "hyperparameter 'warmup_steps': must be >= 0"),
        (["--max_grad_norm", "-1"], r"hyperparameter 'max_grad_norm': must be >= 0 \(0 turns clipping off\)"),
        (["--lora_target_modules", " , "], "hyperparameter 'lora_target_modules': must name at least one module"),
        (["--max_dropped_fraction", "2"], r"hyperparameter 'max_dropped_fraction': must be in \[0, 1\]"),
        (
            ["--per_device_train_batch_size", "4"],
            "hyperparameter 'per_device_train_batch_size' is set by loraops; use tokens_per_step",
        ),
        (["--report_to", "wandb"], "hyperparameter 'report_to' is set by loraops"),
        (["--seed", "-1"], r"hyperparameter 'seed': must be in \[0, 2\*\*32\)"),
        (["--seed", str(2**32)], r"hyperparameter 'seed': must be in \[0, 2\*\*32\)"),
        (["--checkpoint_dir", "/m/checkpoints"], "hyperparameter 'checkpoint_dir': /m/checkpoints is inside model_dir"),
        (["--output_data_dir", "/m"], "hyperparameter 'output_data_dir': /m is inside model_dir /m"),
    ],
)
def test_invalid_hyperparameters(args, message):
    with pytest.raises(ConfigError, match=message):
        load_settings([*REQUIRED, *args], environ={})


def test_file_values_take_the_same_validation_path(tmp_path):
    hp = tmp_path / "hp.json"
    hp.write_text(json.dumps({"merged_shard_size": json.dumps("foo")}))
    with pytest.raises(ConfigError, match="hyperparameter 'merged_shard_size'"):
        load_settings([*REQUIRED, "--hyperparameters-file", str(hp)], environ={})
    hp.write_text(json.dumps({"lora_rank": "8"}))
    with pytest.raises(ConfigError, match=r"unknown hyperparameter\(s\) \['--lora_rank', '8'\]"):
        load_settings([*REQUIRED, "--hyperparameters-file", str(hp)], environ={})


def test_missing_required_location():
    with pytest.raises(ConfigError, match="hyperparameter 'base_model_dir' is required .*SM_CHANNEL_BASE"):
        load_settings(["--train_path", "/t", "--model_dir", "/m"], environ={})


def test_target_modules_and_categories():
    config = TrainConfig(lora_target_modules="q_proj, v_proj", categories="open_qa,closed_qa")
    assert config.target_modules == ["q_proj", "v_proj"]
    assert config.category_filter == ["open_qa", "closed_qa"]
    assert TrainConfig().target_modules == "all-linear"


def test_idle_gpus_are_reported():
    from loraops_trainer.run import idle_gpu_warning

    assert idle_gpu_warning({}) is None
    assert idle_gpu_warning({"SM_NUM_GPUS": "4", "LOCAL_WORLD_SIZE": "4"}) is None
    message = idle_gpu_warning({"SM_NUM_GPUS": "4"})
    assert message.startswith("SM_NUM_GPUS=4 but 1 training process(es) on this host: 3 GPU(s) idle")


def test_hyperparameters_of_a_tuning_job_are_accepted_and_left_out(tmp_path):
    """A SageMaker hyperparameter tuning job adds ``_tuning_objective_metric`` (and may add other ``_tuning_*`` keys)
    to hyperparameters.json; the training toolkit passes those it does not know on as flags too."""
    hp = tmp_path / "hyperparameters.json"
    hp.write_text(
        json.dumps(
            {
                "learning_rate": "0.0003",  # a tuned value: a plain string, not JSON-encoded
                "lora_r": "16",
                "_tuning_objective_metric": "validation_loss",
                "_tuning_job_name": "loraops-tuning-1",
                "sagemaker_torch_distributed_enabled": "true",
            }
        )
    )
    cli = ["--hyperparameters-file", str(hp), "--_tuning_job_name", "loraops-tuning-1", "--_tuning_x=1"]
    settings = load_settings([*REQUIRED, *cli], environ={})
    assert settings.training.learning_rate == 3e-4 and settings.config.lora_r == 16
    assert not [k for k in settings.hyperparameters if k.startswith(("_tuning", "sagemaker"))]


def test_a_multi_host_job_without_a_distributed_launch_is_refused():
    """Two instances, each starting one plain process: each would train (and publish) its own copy."""
    hosts = {"SM_HOSTS": json.dumps(["algo-1", "algo-2"]), "SM_CURRENT_HOST": "algo-1"}
    with pytest.raises(ConfigError, match=r"this job has 2 instances \(SM_HOSTS\) but 1 training process"):
        load_settings(REQUIRED, environ=hosts)
    assert load_settings(REQUIRED, environ={**hosts, "WORLD_SIZE": "8"}).config.model_dir == "/m"  # torchrun's
    assert load_settings(REQUIRED, environ={"SM_HOSTS": json.dumps(["algo-1"])}).config.model_dir == "/m"


def test_without_a_gpu_the_micro_batch_defaults_to_2048_tokens():
    """16,384 tokens per micro-batch made a tiny model take 22 s and 2.4 GB a step on a CPU."""
    assert load_settings(REQUIRED, environ={}).config.tokens_per_step == 2048
    assert load_settings([*REQUIRED, "--max_seq_length", "4096"], environ={}).config.tokens_per_step == 4096
    assert load_settings([*REQUIRED, "--tokens_per_step", "16384"], environ={}).config.tokens_per_step == 16384


def test_without_the_trainers_dependencies_the_hp_check_says_what_is_missing():
    """``loraops finetune start --hp`` checks values with this parser; where torch and transformers are absent (a
    plain ``pip install .``), importing the parser fails, so the CLI names what is missing (a traceback from inside
    load_settings before)."""
    code = (
        "import sys\n"
        "sys.modules['torch'] = sys.modules['transformers'] = None  # as if not installed\n"
        "from loraops.finetune import FineTuneError, validate_hyperparameters\n"
        "try:\n"
        "    validate_hyperparameters({'lora_r': '8'})\n"
        "except FineTuneError as error:\n"
        "    print(error)\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert "checking --hp needs the trainer's settings parser (import of torch halted" in result.stdout, result.stderr
