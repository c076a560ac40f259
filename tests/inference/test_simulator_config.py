"""Simulator knobs: CLI flags, VLLM_SIM_* fallbacks, VLLM_API_KEY, runtime changes."""

from __future__ import annotations

import pytest

from inference.simulator.config import (
    DEFAULT_EMBEDDING_MODEL,
    DEFAULT_GENERATE_MODELS,
    ConfigError,
    RuntimeKnobs,
    config_from_args,
)
from tests.fakes.vllm import knobs_to_args


def test_defaults():
    config = config_from_args([], environ={})
    assert (config.host, config.port, config.max_model_len) == ("127.0.0.1", 8001, 32768)
    assert config.served_model_names == DEFAULT_GENERATE_MODELS
    assert config.embedding_model == DEFAULT_EMBEDDING_MODEL == "intfloat/e5-mistral-7b-instruct"
    assert config.api_keys == ()
    assert config.knobs == RuntimeKnobs()
    assert config.knobs.max_num_seqs == 256


def test_every_knob_has_an_environment_fallback():
    environ = {
        "VLLM_SIM_HOST": "10.0.0.5",
        "VLLM_SIM_PORT": "9000",
        "VLLM_SIM_SERVED_MODEL_NAME": "a/one, b/two",
        "VLLM_SIM_EMBEDDING_MODEL": "",
        "VLLM_SIM_MAX_MODEL_LEN": "4096",
        "VLLM_SIM_TTFT_MS": "12.5",
        "VLLM_SIM_TPOT_MS": "3",
        "VLLM_SIM_MAX_NUM_SEQS": "4",
        "VLLM_SIM_ERROR_RATE": "0.25",
        "VLLM_SIM_ABORT_AFTER_TOKENS": "7",
        "VLLM_SIM_STARTUP_DELAY_S": "90",
        "VLLM_SIM_DOWN": "true",
        "VLLM_API_KEY": "sk-env",
    }
    config = config_from_args([], environ=environ)
    assert (config.host, config.port, config.max_model_len) == ("10.0.0.5", 9000, 4096)
    assert config.served_model_names == ("a/one", "b/two")
    assert config.embedding_model is None
    assert config.api_keys == ("sk-env",)
    assert config.knobs == RuntimeKnobs(
        ttft_ms=12.5,
        tpot_ms=3.0,
        max_num_seqs=4,
        error_rate=0.25,
        abort_after_tokens=7,
        startup_delay_s=90.0,
        down=True,
    )


def test_flags_win_over_environment_and_api_key_flag_replaces_vllm_api_key():
    environ = {"VLLM_SIM_TPOT_MS": "3", "VLLM_API_KEY": "sk-env", "VLLM_SIM_SERVED_MODEL_NAME": "env/model"}
    config = config_from_args(
        ["--tpot-ms", "9", "--api-key", "k1", "k2", "--api-key", "k3",
         "--served-model-name", "x/a", "--served-model-name", "x/b"],
        environ=environ,
    )  # fmt: skip
    assert config.knobs.tpot_ms == 9.0
    assert config.api_keys == ("k1", "k2", "k3")
    assert config.served_model_names == ("x/a", "x/b")


def test_invalid_environment_value_fails_loudly():
    with pytest.raises(ConfigError, match="VLLM_SIM_TPOT_MS"):
        config_from_args([], environ={"VLLM_SIM_TPOT_MS": "fast"})
    with pytest.raises(ConfigError, match="error_rate"):
        config_from_args(["--error-rate", "2"], environ={})


def test_runtime_knob_changes_are_validated_and_atomic():
    knobs = RuntimeKnobs()
    knobs.apply({"tpot_ms": 5, "down": True, "abort_after_tokens": 3})
    assert (knobs.tpot_ms, knobs.down, knobs.abort_after_tokens) == (5.0, True, 3)
    with pytest.raises(ConfigError, match="unknown knob"):
        knobs.apply({"tpot_ms": 1, "nonsense": 1})
    with pytest.raises(ConfigError, match="error_rate"):
        knobs.apply({"tpot_ms": 1, "error_rate": 3})
    with pytest.raises(ConfigError, match="down must be a boolean"):
        knobs.apply({"down": "yes"})
    assert knobs.tpot_ms == 5.0  # nothing from the refused changes stuck


def test_fake_turns_knobs_into_cli_flags():
    args = knobs_to_args(
        {"tpot_ms": 5, "down": True, "error_rate": None, "api_keys": ["a", "b"], "served_model_names": ("m",)}
    )
    assert args == ["--tpot-ms", "5", "--down", "--api-key", "a", "b", "--served-model-name", "m"]
    assert config_from_args(args, environ={}).api_keys == ("a", "b")
