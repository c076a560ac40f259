"""Simulator knobs: CLI flags with ``VLLM_SIM_*`` environment fallbacks.

Precedence for every knob: command-line flag, then environment variable, then default. The API key
follows vLLM itself: ``--api-key`` (one or more), else ``VLLM_API_KEY``.
"""

from __future__ import annotations

import argparse
import os
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, fields
from typing import Any

DEFAULT_GENERATE_MODELS: tuple[str, ...] = (
    "mistralai/Mistral-7B-Instruct-v0.3",
    "mistralai/Mistral-Large-Instruct-2411",
)
DEFAULT_EMBEDDING_MODEL = "intfloat/e5-mistral-7b-instruct"
VLLM_VERSION = "0.33.0"


class ConfigError(ValueError):
    """A knob has a value the simulator cannot run with."""


@dataclass
class RuntimeKnobs:
    """Behaviour that tests may change while the server runs (``POST /sim/control``)."""

    ttft_ms: float = 0.0
    tpot_ms: float = 0.0
    max_num_seqs: int = 256
    error_rate: float = 0.0
    abort_after_tokens: int | None = None
    startup_delay_s: float = 0.0
    down: bool = False
    # The next this-many requests asking for structured output (``response_format``) get broken JSON.
    invalid_structured_outputs: int = 0
    # Benches only: each streamed token's text is replaced by the wall-clock time it left (``@<epoch s>;``), so a
    # client on the same host can measure the delay of every chunk through a relay (``make bench`` P6).
    stamp_chunks: bool = False

    def take_invalid_structured_output(self) -> bool:
        """Should this structured-output request be answered with broken JSON? Counts the knob down."""
        if self.invalid_structured_outputs > 0:
            self.invalid_structured_outputs -= 1
            return True
        return False

    def validate(self) -> None:
        if self.ttft_ms < 0 or self.tpot_ms < 0:
            raise ConfigError("ttft_ms and tpot_ms must be >= 0")
        if self.max_num_seqs < 1:
            raise ConfigError("max_num_seqs must be >= 1")
        if not 0.0 <= self.error_rate <= 1.0:
            raise ConfigError("error_rate must be between 0 and 1")
        if self.abort_after_tokens is not None and self.abort_after_tokens < 0:
            raise ConfigError("abort_after_tokens must be >= 0")
        if self.startup_delay_s < 0:
            raise ConfigError("startup_delay_s must be >= 0")
        if self.invalid_structured_outputs < 0:
            raise ConfigError("invalid_structured_outputs must be >= 0")

    def as_dict(self) -> dict[str, Any]:
        return {f.name: getattr(self, f.name) for f in fields(self)}

    def apply(self, changes: Mapping[str, Any]) -> None:
        """Apply a ``/sim/control`` body atomically: all keys valid, or nothing changes."""
        known = {f.name: f for f in fields(self)}
        unknown = sorted(set(changes) - set(known))
        if unknown:
            raise ConfigError(f"unknown knob(s): {', '.join(unknown)}; known: {', '.join(sorted(known))}")
        candidate = RuntimeKnobs(**self.as_dict())
        for name, value in changes.items():
            setattr(candidate, name, _coerce_knob(name, value))
        candidate.validate()
        for name in changes:
            setattr(self, name, getattr(candidate, name))


def _coerce_knob(name: str, value: Any) -> Any:
    # bool is an int subclass: refuse it for numeric knobs so {"tpot_ms": true} is an error, not 1.
    if name in ("down", "stamp_chunks"):
        if not isinstance(value, bool):
            raise ConfigError(f"{name} must be a boolean")
        return value
    if name == "abort_after_tokens":
        if value is None:
            return None
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError("abort_after_tokens must be an integer or null")
        return value
    if name in ("max_num_seqs", "invalid_structured_outputs"):
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{name} must be an integer")
        return value
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ConfigError(f"{name} must be a number")
    return float(value)


@dataclass
class SimulatorConfig:
    host: str = "127.0.0.1"
    port: int = 8001
    served_model_names: tuple[str, ...] = DEFAULT_GENERATE_MODELS
    embedding_model: str | None = DEFAULT_EMBEDDING_MODEL
    embedding_dimensions: int = 4096
    max_model_len: int = 32768
    api_keys: tuple[str, ...] = ()
    log_level: str = "warning"
    knobs: RuntimeKnobs = field(default_factory=RuntimeKnobs)

    def validate(self) -> None:
        if not self.served_model_names:
            raise ConfigError("at least one --served-model-name is required")
        if self.embedding_model and self.embedding_model in self.served_model_names:
            raise ConfigError("the embedding model must not also be a generate model")
        if self.max_model_len < 1:
            raise ConfigError("max_model_len must be >= 1")
        if self.embedding_dimensions < 1:
            raise ConfigError("embedding_dimensions must be >= 1")
        self.knobs.validate()

    @property
    def all_model_names(self) -> tuple[str, ...]:
        if self.embedding_model:
            return (*self.served_model_names, self.embedding_model)
        return self.served_model_names


def _env(environ: Mapping[str, str], name: str) -> str | None:
    value = environ.get(name)
    return value if value is not None and value != "" else None


def _parse_bool(text: str) -> bool:
    lowered = text.strip().lower()
    if lowered in {"1", "true", "yes", "on"}:
        return True
    if lowered in {"0", "false", "no", "off"}:
        return False
    raise ValueError(f"not a boolean: {text!r}")


def _parse_optional_int(text: str) -> int | None:
    return None if text.strip().lower() in {"", "none", "off"} else int(text)


def _from_env(environ: Mapping[str, str], name: str, parse: Callable[[str], Any], default: Any) -> Any:
    raw = _env(environ, name)
    if raw is None:
        return default
    try:
        return parse(raw)
    except ValueError as exc:
        raise ConfigError(f"{name}={raw!r} is invalid: {exc}") from exc


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m inference.simulator",
        description="A vLLM 0.33.0 OpenAI-compatible server simulator (no GPU, deterministic text).",
    )
    add = parser.add_argument
    add("--host", help="bind address (VLLM_SIM_HOST, default 127.0.0.1)")
    add("--port", type=int, help="TCP port (VLLM_SIM_PORT, default 8001)")
    add(
        "--served-model-name",
        action="extend",
        nargs="+",
        dest="served_model_names",
        help="generate model name(s); repeatable (VLLM_SIM_SERVED_MODEL_NAME, comma-separated)",
    )
    add(
        "--embedding-model",
        help="embedding model name, '' to disable (VLLM_SIM_EMBEDDING_MODEL)",
    )
    add("--embedding-dimensions", type=int, help="embedding width (VLLM_SIM_EMBEDDING_DIMENSIONS, 4096)")
    add("--max-model-len", type=int, help="context length (VLLM_SIM_MAX_MODEL_LEN, default 32768)")
    add("--api-key", action="extend", nargs="+", dest="api_keys", help="accepted bearer key(s) (VLLM_API_KEY)")
    add("--ttft-ms", type=float, help="delay before the first token (VLLM_SIM_TTFT_MS, default 0)")
    add("--tpot-ms", type=float, help="delay per further output token (VLLM_SIM_TPOT_MS, default 0)")
    add("--max-num-seqs", type=int, help="concurrent sequences per model (VLLM_SIM_MAX_NUM_SEQS, 256)")
    add("--error-rate", type=float, help="fraction of generation requests failing with 500 (VLLM_SIM_ERROR_RATE)")
    add(
        "--abort-after-tokens",
        type=int,
        help="fail generation after N tokens (VLLM_SIM_ABORT_AFTER_TOKENS)",
    )
    add("--startup-delay-s", type=float, help="cold-start duration (VLLM_SIM_STARTUP_DELAY_S, default 0)")
    add("--down", action="store_true", default=None, help="start hard down (VLLM_SIM_DOWN)")
    add("--log-level", help="debug|info|warning|error (VLLM_SIM_LOG_LEVEL, default warning)")
    return parser


def config_from_args(argv: Sequence[str] | None = None, environ: Mapping[str, str] | None = None) -> SimulatorConfig:
    environ = os.environ if environ is None else environ
    args = build_parser().parse_args(argv)

    def pick(flag_value: Any, env_name: str, parse: Callable[[str], Any], default: Any) -> Any:
        if flag_value is not None:
            return flag_value
        return _from_env(environ, env_name, parse, default)

    served = args.served_model_names
    if served is None:
        env_served = _env(environ, "VLLM_SIM_SERVED_MODEL_NAME")
        served = [s.strip() for s in env_served.split(",") if s.strip()] if env_served else None
    embedding_model = args.embedding_model
    if embedding_model is None:
        embedding_model = environ.get("VLLM_SIM_EMBEDDING_MODEL", DEFAULT_EMBEDDING_MODEL)

    api_keys = args.api_keys
    if not api_keys:
        env_key = _env(environ, "VLLM_API_KEY")
        api_keys = [env_key] if env_key else []

    knobs = RuntimeKnobs(
        ttft_ms=pick(args.ttft_ms, "VLLM_SIM_TTFT_MS", float, 0.0),
        tpot_ms=pick(args.tpot_ms, "VLLM_SIM_TPOT_MS", float, 0.0),
        max_num_seqs=pick(args.max_num_seqs, "VLLM_SIM_MAX_NUM_SEQS", int, 256),
        error_rate=pick(args.error_rate, "VLLM_SIM_ERROR_RATE", float, 0.0),
        abort_after_tokens=pick(args.abort_after_tokens, "VLLM_SIM_ABORT_AFTER_TOKENS", _parse_optional_int, None),
        startup_delay_s=pick(args.startup_delay_s, "VLLM_SIM_STARTUP_DELAY_S", float, 0.0),
        down=pick(args.down, "VLLM_SIM_DOWN", _parse_bool, False),
    )
    config = SimulatorConfig(
        host=pick(args.host, "VLLM_SIM_HOST", str, "127.0.0.1"),
        port=pick(args.port, "VLLM_SIM_PORT", int, 8001),
        served_model_names=tuple(dict.fromkeys(served)) if served else DEFAULT_GENERATE_MODELS,
        embedding_model=embedding_model.strip() or None,
        embedding_dimensions=pick(args.embedding_dimensions, "VLLM_SIM_EMBEDDING_DIMENSIONS", int, 4096),
        max_model_len=pick(args.max_model_len, "VLLM_SIM_MAX_MODEL_LEN", int, 32768),
        api_keys=tuple(api_keys),
        log_level=pick(args.log_level, "VLLM_SIM_LOG_LEVEL", str, "warning"),
        knobs=knobs,
    )
    config.validate()
    return config
