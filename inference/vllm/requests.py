"""Request bodies, validated the way vLLM 0.33.0 validates them.

The models keep vLLM's field types for the fields the simulator reads (so pydantic produces the same
type errors) and vLLM's ``mode="before"`` validators, declared in vLLM's order: pydantic runs them
last-declared first, which decides which error wins when a body has several problems. Unknown fields
are allowed and ignored, as ``OpenAIBaseModel`` does (``extra="allow"``), including the removed
``guided_*`` fields. Message contents are not modelled in depth: messages are plain objects.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal, TypeVar

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from inference.vllm.errors import ApiError, VLLMValidationError, request_validation_error

_INT64_MIN = -(2**63)
_INT64_MAX = 2**63 - 1

StopParam = str | list[str] | None


class OpenAIBaseModel(BaseModel):
    model_config = ConfigDict(extra="allow")


class StreamOptions(OpenAIBaseModel):
    include_usage: bool | None = False
    continuous_usage_stats: bool | None = False


class NamedFunction(OpenAIBaseModel):
    name: str


class NamedToolChoice(OpenAIBaseModel):
    function: NamedFunction
    type: Literal["function"] = "function"


class FunctionDefinition(OpenAIBaseModel):
    name: str
    description: str | None = None
    parameters: dict[str, Any] | None = None


class ToolParam(OpenAIBaseModel):
    type: Literal["function"] = "function"
    function: FunctionDefinition


def _check_prompt_logprobs(data: dict, other: str) -> None:
    """vLLM's checks on ``prompt_logprobs`` and the endpoint's other logprobs count (``other``): both integers,
    prompt log-probabilities not while streaming, and -1 or more."""
    for name in ("prompt_logprobs", other):
        value = data.get(name)
        if value is not None and (isinstance(value, bool) or not isinstance(value, int | float)):
            raise VLLMValidationError(f"`{name}` must be an integer.", parameter=name)
    prompt_logprobs = data.get("prompt_logprobs")
    if prompt_logprobs is not None:
        if data.get("stream") and (prompt_logprobs > 0 or prompt_logprobs == -1):
            raise VLLMValidationError(
                "`prompt_logprobs` are not available when `stream=True`.", parameter="prompt_logprobs"
            )
        if prompt_logprobs < 0 and prompt_logprobs != -1:
            raise VLLMValidationError(
                "`prompt_logprobs` must be a positive value or -1.", parameter="prompt_logprobs"
            )


def _check_cache_salt(data: Any) -> Any:
    salt = data.get("cache_salt") if isinstance(data, dict) else None
    if salt is not None and (not isinstance(salt, str) or not salt):
        raise VLLMValidationError(
            "Parameter 'cache_salt' must be a non-empty string if provided.", parameter="cache_salt"
        )
    return data


def _check_stream_options(data: Any) -> Any:
    if isinstance(data, dict) and data.get("stream_options") and not data.get("stream"):
        raise VLLMValidationError("Stream options can only be defined when `stream=True`.", parameter="stream_options")
    return data


def _check_response_format(data: Any) -> Any:
    if not isinstance(data, dict):
        return data
    response_format = data.get("response_format")
    if (
        isinstance(response_format, dict)
        and response_format.get("type") == "json_schema"
        and response_format.get("json_schema") is None
    ):
        raise VLLMValidationError(
            "When response_format type is 'json_schema', the 'json_schema' field must be provided.",
            parameter="response_format",
        )
    return data


def _check_structured_outputs_count(data: Any) -> dict[str, Any] | Any:
    if not isinstance(data, dict) or not isinstance(data.get("structured_outputs"), dict):
        return data
    kinds = sum(data["structured_outputs"].get(k) is not None for k in ("json", "regex", "choice"))
    if kinds > 1:
        raise VLLMValidationError(
            "You can only use one kind of constraints for structured outputs ('json', 'regex' or 'choice').",
            parameter="structured_outputs",
        )
    return data


class ChatCompletionRequest(OpenAIBaseModel):
    messages: list[dict[str, Any]]
    model: str | None = None
    frequency_penalty: float | None = None
    logit_bias: dict[str, float] | None = None
    logprobs: bool | None = False
    top_logprobs: int | None = 0
    max_tokens: int | None = None
    max_completion_tokens: int | None = None
    n: int | None = 1
    presence_penalty: float | None = None
    response_format: dict[str, Any] | None = None
    seed: Annotated[int, Field(ge=_INT64_MIN, le=_INT64_MAX)] | None = None
    stop: StopParam = Field(default_factory=list)
    stream: bool | None = False
    stream_options: StreamOptions | None = None
    temperature: float | None = None
    top_p: float | None = None
    tools: list[ToolParam] | None = None
    tool_choice: Literal["none"] | Literal["auto"] | Literal["required"] | NamedToolChoice | None = "none"
    parallel_tool_calls: bool | None = True
    user: str | None = None
    top_k: int | None = None
    min_p: float | None = None
    repetition_penalty: float | None = None
    min_tokens: int = 0
    ignore_eos: bool = False
    add_generation_prompt: bool = True
    continue_final_message: bool = False
    structured_outputs: dict[str, Any] | None = None
    request_id: str | None = None
    cache_salt: str | None = None

    @model_validator(mode="before")
    @classmethod
    def validate_response_format(cls, data: Any) -> Any:
        return _check_response_format(data)

    @model_validator(mode="before")
    @classmethod
    def validate_stream_options(cls, data: Any) -> Any:
        return _check_stream_options(data)

    @model_validator(mode="before")
    @classmethod
    def check_logprobs(cls, data: Any) -> Any:
        if not isinstance(data, dict):
            return data
        _check_prompt_logprobs(data, "top_logprobs")
        top_logprobs = data.get("top_logprobs")
        if top_logprobs is not None:
            if top_logprobs < 0 and top_logprobs != -1:
                raise VLLMValidationError("`top_logprobs` must be a positive value or -1.", parameter="top_logprobs")
            if (top_logprobs == -1 or top_logprobs > 0) and not data.get("logprobs"):
                raise VLLMValidationError(
                    "when using `top_logprobs`, `logprobs` must be set to true.", parameter="top_logprobs"
                )
        return data

    @model_validator(mode="before")
    @classmethod
    def check_structured_outputs_count(cls, data: Any) -> Any:
        data = _check_structured_outputs_count(data)
        if (
            isinstance(data, dict)
            and isinstance(data.get("structured_outputs"), dict)
            and data.get("tool_choice", "none") not in ("none", "auto", "required")
        ):
            raise VLLMValidationError(
                "You can only either use constraints for structured outputs or tools, not both.",
                parameter="structured_outputs",
            )
        return data

    @model_validator(mode="before")
    @classmethod
    def check_tool_usage(cls, data: Any) -> Any:
        if not isinstance(data, dict):
            return data
        if data.get("tools") == []:
            raise VLLMValidationError(
                "`tools` must not be an empty array. Either provide at least one tool or omit the field entirely.",
                parameter="tools",
            )
        if "tool_choice" not in data and data.get("tools"):
            data["tool_choice"] = "auto"
        tool_choice = data.get("tool_choice")
        if tool_choice == "none" or tool_choice is None:
            return data
        if data.get("tools") is None:
            raise VLLMValidationError("When using `tool_choice`, `tools` must be set.", parameter="tool_choice")
        if tool_choice not in ("auto", "required") and not isinstance(tool_choice, dict):
            raise VLLMValidationError(
                f"Invalid value for `tool_choice`: {tool_choice}! "
                'Only named tools, "none", "auto" or "required" are supported.',
                parameter="tool_choice",
            )
        if isinstance(tool_choice, dict):
            usage = 'Correct usage: `{"type": "function", "function": {"name": "my_function"}}`'
            function = tool_choice.get("function")
            if not isinstance(function, dict):
                raise VLLMValidationError(
                    f"Invalid value for `function`: `{function}` in `tool_choice`! {usage}",
                    parameter="tool_choice.function",
                )
            if "name" not in function:
                raise VLLMValidationError(
                    f"Expected field `name` in `function` in `tool_choice`! {usage}",
                    parameter="tool_choice.function.name",
                )
            name = function["name"]
            if not isinstance(name, str) or not name:
                raise VLLMValidationError(
                    f"Invalid `name` in `function`: `{name}` in `tool_choice`! {usage}",
                    parameter="tool_choice.function.name",
                )
            tools = data["tools"] if isinstance(data["tools"], list) else []
            if not any(
                isinstance(t, dict) and isinstance(t.get("function"), dict) and t["function"].get("name") == name
                for t in tools
            ):
                raise VLLMValidationError(
                    "The tool specified in `tool_choice` does not match any of the specified `tools`",
                    parameter="tool_choice",
                )
        return data

    @model_validator(mode="before")
    @classmethod
    def check_generation_prompt(cls, data: Any) -> Any:
        if isinstance(data, dict) and data.get("continue_final_message") and data.get("add_generation_prompt"):
            raise VLLMValidationError("Cannot set both `continue_final_message` and `add_generation_prompt` to True.")
        return data

    @model_validator(mode="before")
    @classmethod
    def check_cache_salt_support(cls, data: Any) -> Any:
        return _check_cache_salt(data)


class CompletionRequest(OpenAIBaseModel):
    model: str | None = None
    prompt: list[Annotated[int, Field(ge=0)]] | list[list[Annotated[int, Field(ge=0)]]] | str | list[str] | None = None
    echo: bool | None = False
    frequency_penalty: float | None = None
    logit_bias: dict[str, float] | None = None
    logprobs: int | None = None
    max_tokens: int | None = 16
    n: int = 1
    presence_penalty: float | None = None
    seed: Annotated[int, Field(ge=_INT64_MIN, le=_INT64_MAX)] | None = None
    stop: StopParam = Field(default_factory=list)
    stream: bool | None = False
    stream_options: StreamOptions | None = None
    suffix: str | None = None
    temperature: float | None = None
    top_p: float | None = None
    user: str | None = None
    top_k: int | None = None
    min_tokens: int = 0
    ignore_eos: bool = False
    add_special_tokens: bool = True
    response_format: dict[str, Any] | None = None
    structured_outputs: dict[str, Any] | None = None
    request_id: str | None = None
    cache_salt: str | None = None

    @model_validator(mode="before")
    @classmethod
    def normalize_null_max_tokens(cls, data: Any) -> Any:
        if isinstance(data, dict) and data.get("max_tokens") is None:
            data = {**data, "max_tokens": 16}
        return data

    @model_validator(mode="before")
    @classmethod
    def validate_response_format(cls, data: Any) -> Any:
        return _check_response_format(data)

    @model_validator(mode="before")
    @classmethod
    def check_structured_outputs_count(cls, data: Any) -> Any:
        return _check_structured_outputs_count(data)

    @model_validator(mode="before")
    @classmethod
    def check_logprobs(cls, data: Any) -> Any:
        if not isinstance(data, dict):
            return data
        _check_prompt_logprobs(data, "logprobs")
        logprobs = data.get("logprobs")
        if logprobs is not None and logprobs < 0 and logprobs != -1:
            raise VLLMValidationError("`logprobs` must be a positive value or -1.", parameter="logprobs")
        return data

    @model_validator(mode="before")
    @classmethod
    def validate_stream_options(cls, data: Any) -> Any:
        return _check_stream_options(data)

    @model_validator(mode="before")
    @classmethod
    def validate_prompt_and_prompt_embeds(cls, data: Any) -> Any:
        if not isinstance(data, dict):
            return data
        prompt, embeds = data.get("prompt"), data.get("prompt_embeds")
        if (prompt is None or prompt == "") and (embeds is None or embeds == []):
            raise VLLMValidationError(
                "Either prompt or prompt_embeds must be provided and non-empty.", parameter="prompt"
            )
        return data

    @model_validator(mode="before")
    @classmethod
    def check_cache_salt_support(cls, data: Any) -> Any:
        return _check_cache_salt(data)


class EmbeddingRequest(OpenAIBaseModel):
    model: str | None = None
    input: list[Annotated[int, Field(ge=0)]] | list[list[Annotated[int, Field(ge=0)]]] | str | list[str]
    encoding_format: Literal["float", "base64", "bytes"] = "float"
    dimensions: int | None = None
    user: str | None = None
    truncate_prompt_tokens: int | None = None
    request_id: str | None = None


class TokenizeCompletionRequest(OpenAIBaseModel):
    model: str | None = None
    prompt: str
    add_special_tokens: bool = True
    return_token_strs: bool | None = False


class TokenizeChatRequest(OpenAIBaseModel):
    model: str | None = None
    messages: list[dict[str, Any]]
    tools: list[ToolParam] | None = None
    add_generation_prompt: bool = True
    continue_final_message: bool = False
    add_special_tokens: bool = False
    return_token_strs: bool | None = False

    @model_validator(mode="before")
    @classmethod
    def check_generation_prompt(cls, data: Any) -> Any:
        if isinstance(data, dict) and data.get("continue_final_message") and data.get("add_generation_prompt"):
            raise VLLMValidationError("Cannot set both `continue_final_message` and `add_generation_prompt` to True.")
        return data


class DetokenizeRequest(OpenAIBaseModel):
    model: str | None = None
    tokens: list[int]


M = TypeVar("M", bound=BaseModel)


def parse(model: type[M], body: Any) -> M:
    """Validate a decoded JSON body, turning pydantic errors into vLLM's 400 "Bad Request"."""
    try:
        return model.model_validate(body)
    except ValidationError as exc:
        errors = [
            {**error, "loc": ("body", *error["loc"])}
            for error in exc.errors(include_url=False)  # FastAPI drops the docs URL too
        ]
        raise request_validation_error(errors) from None
    except VLLMValidationError as exc:  # raised outside pydantic's wrapping (not expected)
        raise ApiError.bad_request(str(exc), exc.parameter) from None


def check_sampling(
    *, n: int, max_tokens: int | None, temperature: float | None, top_p: float | None,
    presence_penalty: float | None, frequency_penalty: float | None, min_tokens: int = 0,
) -> None:  # fmt: skip
    """The subset of ``SamplingParams._verify_args`` that clients plausibly trip over."""
    if n < 1:
        raise ApiError.bad_request(f"n must be at least 1, got {n}.", "n")
    if presence_penalty is not None and not -2.0 <= presence_penalty <= 2.0:
        raise ApiError.bad_request(f"presence_penalty must be in [-2, 2], got {presence_penalty}.", "presence_penalty")
    if frequency_penalty is not None and not -2.0 <= frequency_penalty <= 2.0:
        raise ApiError.bad_request(
            f"frequency_penalty must be in [-2, 2], got {frequency_penalty}.", "frequency_penalty"
        )
    if temperature is not None and temperature < 0.0:
        raise ApiError.bad_request(f"temperature must be non-negative, got {temperature}.", "temperature")
    if top_p is not None and not 0.0 < top_p <= 1.0:
        raise ApiError.bad_request(f"top_p must be in (0, 1], got {top_p}.", "top_p")
    if max_tokens is not None and max_tokens < 1:
        raise ApiError.bad_request(f"max_tokens must be at least 1, got {max_tokens}.", "max_tokens")
    if min_tokens < 0:
        raise ApiError.bad_request(f"min_tokens must be greater than or equal to 0, got {min_tokens}.", "min_tokens")
    if max_tokens is not None and min_tokens > max_tokens:
        raise ApiError.bad_request(
            f"min_tokens must be less than or equal to max_tokens={max_tokens}, got {min_tokens}.", "min_tokens"
        )
