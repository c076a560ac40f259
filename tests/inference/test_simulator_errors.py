"""Error bodies, status codes and --api-key guarding, per the protocol reference §1.3 and §3.

A simulator with a 48-token context and two API keys, as a locked-down deployment would run.
"""

from __future__ import annotations

import pytest

from inference.tokens import count_chat_prompt_tokens
from tests.fakes.vllm import RawResponse, SimulatorProcess, raw_request, shared_simulator

MODEL = "mistralai/Mistral-7B-Instruct-v0.3"
CONTEXT = 48
KEYS = ("sk-first", "sk-second")
AUTH = {"Authorization": f"Bearer {KEYS[0]}"}
HELLO = [{"role": "user", "content": "Hello, how are you?"}]
UNAUTHORIZED = b'{"error":"Unauthorized"}'


@pytest.fixture(scope="module")
def sim() -> SimulatorProcess:
    return shared_simulator(max_model_len=CONTEXT, api_keys=list(KEYS))


def chat(sim: SimulatorProcess, headers: dict | None = None, **body) -> RawResponse:
    body = {"model": MODEL, "messages": HELLO, **body}
    return raw_request(sim.url("/v1/chat/completions"), json_body=body, headers=AUTH if headers is None else headers)


def error_of(response: RawResponse, status: int) -> dict:
    assert response.status == status, response.body
    assert response.headers["Content-Type"] == "application/json"
    body = response.json()
    assert list(body) == ["error"]
    assert list(body["error"]) == ["message", "type", "param", "code"]
    assert body["error"]["code"] == status
    return body["error"]


# --- authentication ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    "path", ["/v1/models", "/v1/anything-at-all", "/v2/embed", "/inference/v1/generate", "/cohere/x"]
)
def test_guarded_prefixes_need_a_bearer_key(sim, path):
    response = raw_request(sim.url(path), method="GET")
    assert response.status == 401
    assert response.body == UNAUTHORIZED
    assert "WWW-Authenticate" not in response.headers


@pytest.mark.parametrize(
    "header",
    [f"Bearer {KEYS[0]}", f"bearer {KEYS[1]}", f"BEARER {KEYS[0]}"],
)
def test_any_configured_key_is_accepted_with_a_case_insensitive_scheme(sim, header):
    assert raw_request(sim.url("/v1/models"), method="GET", headers={"Authorization": header}).status == 200


@pytest.mark.parametrize(
    "headers",
    [
        {"Authorization": "Bearer wrong"},
        {"Authorization": f"Basic {KEYS[0]}"},
        {"Authorization": KEYS[0]},
        {"Authorization": f"Bearer  {KEYS[0]}"},  # the token is everything after the first space
        {"x-api-key": KEYS[0]},
    ],
)
def test_wrong_or_misplaced_keys_are_refused(sim, headers):
    response = raw_request(sim.url("/v1/models"), method="GET", headers=headers)
    assert (response.status, response.body) == (401, UNAUTHORIZED)


def test_auth_is_checked_before_anything_about_the_request(sim):
    response = raw_request(sim.url("/v1/chat/completions"), data=b"not json", headers={"Content-Type": "text/plain"})
    assert (response.status, response.body) == (401, UNAUTHORIZED)


@pytest.mark.parametrize(
    ("method", "path", "body"),
    [
        ("GET", "/health", None),
        ("GET", "/ping", None),
        ("POST", "/ping", None),
        ("GET", "/version", None),
        ("GET", "/metrics", None),
        ("POST", "/tokenize", {"prompt": "hi"}),
        ("POST", "/detokenize", {"tokens": [1, 23325]}),
    ],
)
def test_operational_endpoints_stay_open(sim, method, path, body):
    assert raw_request(sim.url(path), method=method, json_body=body).status == 200


def test_unknown_path_is_a_plain_404_once_authenticated(sim):
    response = raw_request(sim.url("/v1/nope"), method="GET", headers=AUTH)
    error = error_of(response, 404)
    assert error == {"message": "Not Found", "type": "Not Found", "param": None, "code": 404}
    outside = raw_request(sim.url("/nope"), method="GET")
    assert outside.body == b'{"error":{"message":"Not Found","type":"Not Found","param":null,"code":404}}'


# --- model and context errors -----------------------------------------------------------------


def test_unknown_model_is_a_404_listing_the_valid_aliases(sim):
    response = chat(sim, model="mistral-tiny")
    assert response.body == (
        b'{"error":{"message":"The model `mistral-tiny` does not exist. Valid aliases: '
        b'mistralai/Mistral-7B-Instruct-v0.3, mistralai/Mistral-Large-Instruct-2411.",'
        b'"type":"NotFoundError","param":"model","code":404}}'
    )
    assert response.status == 404


def test_prompt_over_the_context_length_is_a_400_with_the_0_33_message(sim):
    messages = [{"role": "user", "content": "word " * 60}]
    prompt_tokens = count_chat_prompt_tokens(MODEL, messages)
    assert prompt_tokens > CONTEXT
    error = error_of(chat(sim, messages=messages), 400)
    assert error == {
        "message": f"This model's maximum context length is {CONTEXT} tokens. However, your prompt contains "
        f"{prompt_tokens} input tokens, which exceeds this limit even without any output tokens. "
        "Please reduce the length of the input prompt.",
        "type": "BadRequestError",
        "param": "input_tokens",
        "code": 400,
    }


def test_max_tokens_beyond_the_room_left_is_clamped_silently(sim):
    text = "/echo " + "count along with me " * 10
    messages = [{"role": "user", "content": text}]
    prompt_tokens = count_chat_prompt_tokens(MODEL, messages)
    assert prompt_tokens < CONTEXT
    response = chat(sim, messages=messages, max_tokens=10_000)
    assert response.status == 200
    body = response.json()
    assert body["usage"]["completion_tokens"] == CONTEXT - prompt_tokens
    assert body["usage"]["total_tokens"] == CONTEXT
    assert body["choices"][0]["finish_reason"] == "length"


# --- request validation -----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("body", "param", "text"),
    [
        ({"stream_options": {"include_usage": True}}, "stream_options",
         "Stream options can only be defined when `stream=True`."),
        ({"tools": []}, "tools",
         "`tools` must not be an empty array. Either provide at least one tool or omit the field entirely."),
        ({"tool_choice": "auto"}, "tool_choice", "When using `tool_choice`, `tools` must be set."),
        ({"tool_choice": "any", "tools": [{"type": "function", "function": {"name": "f"}}]}, "tool_choice",
         'Invalid value for `tool_choice`: any! Only named tools, "none", "auto" or "required" are supported.'),
        ({"tool_choice": {"type": "function", "function": {"name": "g"}},
          "tools": [{"type": "function", "function": {"name": "f"}}]}, "tool_choice",
         "The tool specified in `tool_choice` does not match any of the specified `tools`"),
        ({"top_logprobs": 3}, "top_logprobs", "when using `top_logprobs`, `logprobs` must be set to true."),
        ({"prompt_logprobs": 1, "stream": True}, "prompt_logprobs",
         "`prompt_logprobs` are not available when `stream=True`."),
        ({"response_format": {"type": "json_schema"}}, "response_format",
         "When response_format type is 'json_schema', the 'json_schema' field must be provided."),
        ({"structured_outputs": {"json": {}, "regex": "a+"}}, "structured_outputs",
         "You can only use one kind of constraints for structured outputs ('json', 'regex' or 'choice')."),
    ],
)  # fmt: skip
def test_vllm_validators_answer_400_bad_request_with_their_param(sim, body, param, text):
    error = error_of(chat(sim, **body), 400)
    assert error["type"] == "Bad Request"
    assert error["param"] == param
    assert error["message"].startswith("1 validation error:\n  {'type': 'value_error', 'loc': 'body', ")
    assert f"'msg': 'Value error, {text}'" in error["message"] or f"Value error, {text}" in error["message"]
    assert f"'ctx': {{'error': VLLMValidationError({text!r})}}" in error["message"]


@pytest.mark.parametrize(
    ("body", "param", "text"),
    [
        ({"prompt_logprobs": 1, "stream": True}, "prompt_logprobs",
         "`prompt_logprobs` are not available when `stream=True`."),
        ({"prompt_logprobs": -2}, "prompt_logprobs", "`prompt_logprobs` must be a positive value or -1."),
        ({"logprobs": True}, "logprobs", "`logprobs` must be an integer."),
        ({"logprobs": -3}, "logprobs", "`logprobs` must be a positive value or -1."),
    ],
)  # fmt: skip
def test_completions_share_the_logprobs_rules(sim, body, param, text):
    response = raw_request(sim.url("/v1/completions"), json_body={"model": MODEL, "prompt": "Hi", **body},
                           headers=AUTH)
    error = error_of(response, 400)
    assert error["param"] == param
    assert text in error["message"]


def test_continue_final_message_with_generation_prompt_is_refused(sim):
    # vLLM's validator reads the raw body, so only an explicit add_generation_prompt conflicts.
    assert chat(sim, continue_final_message=True).status == 200
    error = error_of(chat(sim, continue_final_message=True, add_generation_prompt=True), 400)
    assert "Cannot set both `continue_final_message` and `add_generation_prompt` to True." in error["message"]
    assert error["type"] == "Bad Request"


def test_type_errors_are_pydantic_style_with_a_dotted_param(sim):
    error = error_of(chat(sim, messages="hello"), 400)
    assert error == {
        "message": "1 validation error:\n  {'type': 'list_type', 'loc': 'body.messages', "
        "'msg': 'Input should be a valid list', 'input': 'hello'}",
        "type": "Bad Request",
        "param": "body.messages",
        "code": 400,
    }
    error = error_of(chat(sim, max_tokens="lots"), 400)
    assert error["param"] == "body.max_tokens"
    assert "'type': 'int_parsing'" in error["message"]


def test_missing_messages_reports_the_field(sim):
    response = raw_request(sim.url("/v1/chat/completions"), json_body={"model": MODEL}, headers=AUTH)
    error = error_of(response, 400)
    assert error["param"] == "body.messages"
    assert error["message"] == (
        "1 validation error:\n  {'type': 'missing', 'loc': 'body.messages', 'msg': 'Field required', "
        "'input': '<dict of 1 items>'}"
    )


def test_sampling_parameter_errors_are_bad_request_errors(sim):
    error = error_of(chat(sim, n=0), 400)
    assert error == {"message": "n must be at least 1, got 0.", "type": "BadRequestError", "param": "n", "code": 400}
    assert error_of(chat(sim, temperature=-1), 400)["param"] == "temperature"
    assert error_of(chat(sim, top_p=1.5), 400)["param"] == "top_p"
    assert error_of(chat(sim, max_tokens=-3), 400)["message"] == "max_tokens must be at least 1, got -3."


def test_non_json_content_type_is_415(sim):
    response = raw_request(sim.url("/v1/chat/completions"), data=b"{}", headers={**AUTH, "Content-Type": "text/plain"})
    assert response.status == 415
    assert response.body == (
        b'{"error":{"message":"Unsupported Media Type: Only \'application/json\' is allowed",'
        b'"type":"Unsupported Media Type","param":null,"code":415}}'
    )


def test_malformed_json_is_a_json_invalid_validation_error(sim):
    response = raw_request(
        sim.url("/v1/chat/completions"), data=b'{"messages": [1,', headers={**AUTH, "Content-Type": "application/json"}
    )
    error = error_of(response, 400)
    assert error == {
        "message": "1 validation error:\n  {'type': 'json_invalid', 'loc': 'body.16', 'msg': 'JSON decode error', "
        "'input': '<dict of 0 items>', 'ctx': {'error': 'Expecting value'}}",
        "type": "Bad Request",
        "param": "body.16",
        "code": 400,
    }


def test_wrong_method_is_405(sim):
    response = raw_request(sim.url("/v1/chat/completions"), method="GET", headers=AUTH)
    assert error_of(response, 405)["type"] == "Method Not Allowed"
