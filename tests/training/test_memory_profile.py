"""The auto memory profile: its estimates against the H200 measurements it is calibrated on, its choices per GPU
size, explicit settings winning, and transformers recomputing exactly the layers it names."""

from __future__ import annotations

import json
import warnings

import pytest
import torch

from loraops_trainer import hyperparameters
from loraops_trainer.memory_profile import (
    GIB,
    USABLE,
    ModelShape,
    apply_memory_profile,
    choose,
    estimate_peak_bytes,
    recomputed_layers,
)
from loraops_trainer.settings import ConfigError, TrainConfig
from loraops_trainer.training_arguments import derived_training_arguments

LLAMA2_7B = ModelShape(hidden=4096, intermediate=11008, layers=32, heads=32, kv_heads=32, vocab=32000)
H200, H100, L40S, A10G = 139.7 * GIB, 79.2 * GIB, 44.4 * GIB, 22.0 * GIB  # what torch reports as total memory


@pytest.mark.parametrize(
    ("tokens", "every_n", "measured_gib", "tolerance"),
    [(4096, 0, 31.7, 0.05), (8192, 0, 57.0, 0.05), (16384, 0, 107.9, 0.05), (16384, 1, 16.0, 0.15)],
)
def test_estimates_match_the_h200_measurements(tokens, every_n, measured_gib, tolerance):
    estimate = estimate_peak_bytes(LLAMA2_7B, tokens, every_n) / GIB
    assert abs(estimate - measured_gib) <= tolerance * measured_gib, estimate


def test_bigger_gpus_keep_more_activations_and_every_choice_fits():
    profiles = {
        name: choose(LLAMA2_7B, budget, min_tokens=2048, max_tokens=32768)
        for name, budget in [("H200", H200), ("H100", H100), ("L40S", L40S), ("A10G", A10G)]
    }
    assert profiles["H200"].recompute_every_n_layers == 0 and profiles["H200"].tokens_per_step >= 16384
    assert profiles["A10G"].recompute_every_n_layers == 1  # the smallest card recomputes every layer
    for name, budget in [("H200", H200), ("H100", H100), ("L40S", L40S), ("A10G", A10G)]:
        assert profiles[name].estimated_peak_gib * GIB <= USABLE * budget + GIB / 10, name
        assert f"{budget / GIB:.0f} GiB budget" in profiles[name].reason
    kept = [LLAMA2_7B.layers - profiles[n].recomputed_layers for n in ("A10G", "L40S", "H100", "H200")]
    assert kept == sorted(kept)


def test_a_budget_nothing_fits_is_refused_with_the_numbers():
    with pytest.raises(MemoryError, match=r"fits 4\.0 GiB .* needs about"):
        choose(LLAMA2_7B, 4 * GIB, min_tokens=2048)


def test_recomputed_layers_match_every_n_layers():
    assert [recomputed_layers(32, n) for n in (0, 1, 2, 3, 4)] == [0, 32, 16, 11, 8]


def _config(base, **overrides) -> TrainConfig:
    return TrainConfig(base_model_dir=str(base), train_path="t", model_dir="m", **overrides)


def _llama2_7b_folder(folder):
    """A base model folder with Llama-2-7B's shape (its config.json only: the profile reads nothing else)."""
    (folder / "config.json").write_text(
        json.dumps(
            {
                "hidden_size": 4096,
                "intermediate_size": 11008,
                "num_hidden_layers": 32,
                "num_attention_heads": 32,
                "num_key_value_heads": 32,
                "vocab_size": 32000,
            }
        )
    )
    return folder


def test_explicit_settings_win_and_cpu_runs_keep_the_defaults(tmp_path):
    _llama2_7b_folder(tmp_path)
    training = {"activation_checkpointing": True}
    config, chosen, profile = apply_memory_profile(_config(tmp_path), training, set(), int(A10G))
    assert profile.recompute_every_n_layers == 1 and config.tokens_per_step == profile.tokens_per_step
    config, chosen, profile = apply_memory_profile(_config(tmp_path), training, set(), int(H200))
    assert chosen["activation_checkpointing"] is False and config.tokens_per_step == profile.tokens_per_step

    given = {"tokens_per_step", "activation_checkpointing"}
    config, chosen, profile = apply_memory_profile(_config(tmp_path, tokens_per_step=8192), training, given, int(H200))
    assert config.tokens_per_step == 8192 and chosen["activation_checkpointing"] is True  # the user's, untouched
    assert profile.tokens_per_step == 8192 and profile.recompute_every_n_layers == 1  # and estimated as such

    config, chosen, profile = apply_memory_profile(_config(tmp_path), training, set(), 0)  # no CUDA device
    assert profile is None and config.tokens_per_step == 16384 and chosen == training
    config, chosen, profile = apply_memory_profile(_config(tmp_path, memory_profile="off"), training, set(), int(H200))
    assert profile is None and chosen == training

    with pytest.raises(ConfigError, match="memory_budget_gib"):
        apply_memory_profile(_config(tmp_path, memory_budget_gib=3), training, set(), int(H200))


@pytest.mark.parametrize(
    ("flags", "recompute"),
    [
        (["--activation_checkpointing", "false"], False),
        (["--activation_checkpointing", "true"], True),
        (["--gradient_checkpointing", "false"], False),  # transformers' deprecated alias
        (["--gradient_checkpointing", "true"], True),
    ],
)
def test_recomputation_the_user_sets_is_the_one_estimated_and_trained(tmp_path, monkeypatch, flags, recompute):
    """Through load_settings, under either of transformers' names. The GPU's size is the one thing mocked: this
    machine has no CUDA device, and the profile runs only with one."""
    monkeypatch.setattr(hyperparameters, "gpu_memory_bytes", lambda: int(H200))
    base = _llama2_7b_folder(tmp_path)
    argv = ["--base_model_dir", str(base), "--train_path", "/t", "--model_dir", "/m", *flags]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)  # the alias's deprecation notice (test_config.py checks it)
        settings = hyperparameters.load_settings(argv, environ={})
    assert settings.training.activation_checkpointing is recompute
    assert settings.memory_profile.activation_checkpointing is recompute  # estimated as it will train
    assert settings.memory_profile.recompute_every_n_layers == (1 if recompute else 0)


def test_transformers_recomputes_exactly_every_nth_layer(tiny_base):
    """The profile's every_n_layers reaches TrainingArguments and the Trainer checkpoints only those layers: their
    forward runs again in the backward pass."""
    from transformers import AutoModelForCausalLM, LlamaConfig, Trainer, TrainingArguments

    config = LlamaConfig.from_pretrained(str(tiny_base))
    config.num_hidden_layers = 4
    model = AutoModelForCausalLM.from_config(config)
    calls = [0] * 4
    for index, layer in enumerate(model.model.layers):
        # a module inside the layer: the checkpoint wraps the layer's forward, so a recomputed layer calls it twice
        layer.mlp.register_forward_pre_hook(lambda *_, i=index: calls.__setitem__(i, calls[i] + 1))
    derived = derived_training_arguments(_config(tiny_base), every_n_layers=2)
    arguments = TrainingArguments(
        output_dir=str(tiny_base.parent / "every-n"),
        max_steps=1,
        activation_checkpointing=True,
        activation_checkpointing_kwargs=derived["activation_checkpointing_kwargs"],
        use_cpu=True,
        report_to="none",
        save_strategy="no",
    )
    batch = {"input_ids": torch.randint(3, config.vocab_size, (8,)).tolist()}
    trainer = Trainer(model=model, args=arguments, train_dataset=[{**batch, "labels": batch["input_ids"]}] * 2)
    trainer.train()
    assert calls == [2, 1, 2, 1]  # layers 0 and 2 recomputed, 1 and 3 kept
