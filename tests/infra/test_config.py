"""Configuration validation: every bad value fails with a message naming its key."""

from __future__ import annotations

from typing import get_args

import pytest
from pydantic import ValidationError

from infra.config import CONTEXT_KEY, ConfigError, load_environments
from infra.config_sections import ServingConfig
from loraops import endpoints


def _envs(context):
    return context[CONTEXT_KEY]


def test_all_environments_load_from_cdk_json(context_copy):
    raw = context_copy["loraops:environments"]
    configs = load_environments(context_copy)
    assert [c.name for c in configs] == list(raw)
    for config in configs:
        assert config.base_model_id == raw[config.name]["base_model_id"]
        assert config.auto_approve is (raw[config.name]["approval"] == "auto")
        assert config.base_group == config.base_model_id.replace("/", "--")
        assert {line.mode.value for line in config.fine_tuned_lines} == {
            line["mode"] for line in raw[config.name]["fine_tuned_lines"]
        }


def test_selecting_one_environment(context_copy):
    assert [c.name for c in load_environments(context_copy, "staging")] == ["staging"]


def test_unknown_environment_names_the_known_ones(context_copy):
    with pytest.raises(ConfigError, match=r"-c env=qa: unknown environment \(configured: dev, prod, staging\)"):
        load_environments(context_copy, "qa")


def test_missing_context_key():
    with pytest.raises(ConfigError, match="The CDK context key: loraops:environments is undefined."):
        load_environments({})


@pytest.mark.parametrize(
    ("key", "value", "message"),
    [
        ("region", "useast1", r"loraops:environments\.dev\.region: String should match pattern"),
        ("account", "12345", r"loraops:environments\.dev\.account: String should match pattern"),
        ("approval", "sometimes", r"loraops:environments\.dev\.approval: Input should be 'auto' or 'manual'"),
        ("removal_policy", "keep", r"loraops:environments\.dev\.removal_policy"),
        ("training_instance_type", "g5.2xlarge", r"loraops:environments\.dev\.training_instance_type"),
        ("log_retention_days", 31, r"loraops:environments\.dev\.log_retention_days: must be one of"),
        ("base_model_id", "llama", r"loraops:environments\.dev\.base_model_id: base model id 'llama' must look like"),
        (
            "availability_zones",
            ["us-east-1a"],
            r"loraops:environments\.dev\.availability_zones: List should have at least 2",
        ),
        ("user_profiles", ["bad_name"], r"loraops:environments\.dev\.user_profiles: user profile name 'bad_name'"),
        ("surprise", 1, r"loraops:environments\.dev\.surprise: Extra inputs are not permitted"),
    ],
)
def test_invalid_values_name_their_key(context_copy, key, value, message):
    _envs(context_copy)["dev"][key] = value
    with pytest.raises(ConfigError, match=message):
        load_environments(context_copy)


def test_missing_required_key(context_copy):
    del _envs(context_copy)["prod"]["account"]
    with pytest.raises(ConfigError, match=r"loraops:environments\.prod\.account: Field required"):
        load_environments(context_copy)


def test_zone_outside_region(context_copy):
    _envs(context_copy)["prod"]["availability_zones"] = ["us-east-1a", "us-east-1b"]
    with pytest.raises(ConfigError, match="availability zone 'us-east-1a' is not in region 'us-west-2'"):
        load_environments(context_copy)


def test_adapter_line_needs_task(context_copy):
    _envs(context_copy)["dev"]["fine_tuned_lines"] = [{"mode": "adapter", "dataset": "dolly"}]
    with pytest.raises(ConfigError, match=r"fine_tuned_lines\.0: adapter lines need a 'task'"):
        load_environments(context_copy)


def test_duplicate_groups_rejected(context_copy):
    line = {"mode": "merged", "dataset": "dolly"}
    _envs(context_copy)["dev"]["fine_tuned_lines"] = [line, line]
    with pytest.raises(ConfigError, match="name the same package group twice"):
        load_environments(context_copy)


def test_group_name_too_long(context_copy):
    _envs(context_copy)["dev"]["fine_tuned_lines"] = [
        {"mode": "adapter", "dataset": "dolly", "task": "a-very-long-task-name-that-overflows"}
    ]
    with pytest.raises(ConfigError, match="SageMaker allows at most 63"):
        load_environments(context_copy)


def test_environment_name_rules(context_copy):
    _envs(context_copy)["Dev_1"] = _envs(context_copy)["dev"]
    with pytest.raises(ConfigError, match=r"loraops:environments\.Dev_1: environment names"):
        load_environments(context_copy)


@pytest.mark.parametrize("env", ["staging", "prod"])
def test_manual_approval_needs_approvers(context_copy, env):
    """Without approvers, 'manual' would mean 'any administrator': synth refuses the configuration."""
    del _envs(context_copy)[env]["approvers"]
    with pytest.raises(ConfigError, match=rf"loraops:environments\.{env}: approval is 'manual' but no 'approvers'"):
        load_environments(context_copy)


def test_every_manual_environment_in_cdk_json_names_its_approvers(context_copy):
    for config in load_environments(context_copy):
        assert config.auto_approve or config.approvers, config.name


def test_instance_type_allow_list(context_copy):
    dev = _envs(context_copy)["dev"]
    (config,) = load_environments(context_copy, "dev")
    assert config.allowed_instance_types == sorted({dev["training_instance_type"], dev["serving_instance_type"]})
    dev["instance_types"] = ["ml.g5.2xlarge", "ml.g5.12xlarge"]
    (config,) = load_environments(context_copy, "dev")
    assert config.allowed_instance_types == ["ml.g5.12xlarge", "ml.g5.2xlarge"]
    dev["instance_types"] = ["ml.g5.12xlarge"]
    with pytest.raises(ConfigError, match=r"dev: training_instance_type 'ml.g5.2xlarge' is not in instance_types"):
        load_environments(context_copy, "dev")
    dev["instance_types"] = ["g5.2xlarge"]
    with pytest.raises(ConfigError, match=r"dev\.instance_types: instance type 'g5.2xlarge' is not of the form"):
        load_environments(context_copy, "dev")


@pytest.mark.parametrize(
    ("key", "value"), [("alarm_topic_arn", "arn:aws:sqs:us-east-1:111111111111:q"), ("alarm_email", "oncall")]
)
def test_alarm_destination_is_validated(context_copy, key, value):
    _envs(context_copy)["dev"][key] = value
    with pytest.raises(ConfigError, match=rf"loraops:environments\.dev\.{key}: String should match pattern"):
        load_environments(context_copy)


def test_serving_modes_and_engines_are_loraops_vocabulary():
    """Configuration accepts exactly the serving modes and engines ``loraops.endpoints`` defines, no other value."""
    assert get_args(ServingConfig.model_fields["mode"].annotation) == endpoints.MODES
    assert get_args(ServingConfig.model_fields["engine"].annotation) == endpoints.ENGINES
    for mode in endpoints.MODES:
        assert ServingConfig(mode=mode, engine=endpoints.VLLM).mode == mode
    for engine in endpoints.ENGINES:
        assert ServingConfig(mode=endpoints.ENDPOINT, engine=engine).engine == engine
    for field, value in (("mode", "serverless"), ("engine", "tgi")):
        with pytest.raises(ValidationError, match=field):
            ServingConfig(**{field: value})
