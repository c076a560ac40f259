"""What `/v1` refuses before anything reaches a model: wrong types, empty prompts, out-of-range numbers and
fields outside the allow-list, each a 400 in OpenAI's shape naming the field (never a 500 or a 502)."""

from __future__ import annotations

import httpx
import pytest

from tests.conftest import ingested

MODEL = "mistralai/Mistral-7B-Instruct-v0.3"

pytestmark = pytest.mark.django_db(transaction=True)


def post(server, key, path: str, body: bytes):
    return httpx.post(f"{server.base_url}{path}", content=body, timeout=30,
                      headers={"Authorization": f"Bearer {key}", "content-type": "application/json"})


CHAT = b'{"model": "%s", "messages": [{"role": "user", "content": "Hi"}], ' % MODEL.encode()
COMPLETION = b'{"model": "%s", ' % MODEL.encode()


@pytest.mark.parametrize(
    ("path", "body", "param"),
    [
        ("/v1/chat/completions", CHAT + b'"max_tokens": "10"}', "max_tokens"),
        ("/v1/chat/completions", CHAT + b'"max_completion_tokens": "5"}', "max_completion_tokens"),
        ("/v1/completions", COMPLETION + b'"prompt": []}', "prompt"),
        ("/v1/completions", COMPLETION + b'"prompt": [[]]}', "prompt"),
        ("/v1/chat/completions", CHAT + b'"temperature": 1e308}', "temperature"),
        ("/v1/chat/completions", CHAT + b'"top_p": 1e308}', "top_p"),
        ("/v1/chat/completions", CHAT + b'"max_tokens": 1000000000000}', "max_tokens"),
        ("/v1/chat/completions", CHAT + b'"max_tokens": 100000000000000000000000}', "max_tokens"),
        ("/v1/completions", COMPLETION + b'"prompt": "Hi", "max_tokens": 1000000000000}', "max_tokens"),
        ("/v1/chat/completions", CHAT + b'"priority": -100}', "priority"),
        ("/v1/chat/completions", CHAT + b'"ignore_eos": true}', "ignore_eos"),
        ("/v1/chat/completions", CHAT + b'"chat_template": "{{ secrets }}"}', "chat_template"),
        ("/v1/chat/completions", CHAT + b'"kv_transfer_params": {}}', "kv_transfer_params"),
        ("/v1/completions", COMPLETION + b'"prompt": "Hi", "cache_salt": "mine"}', "cache_salt"),
    ],
)
def test_bad_input_is_a_400_naming_the_field_and_never_reaches_the_model(gateway_ready, acme, issue_key, simulator,
                                                                         path, body, param):
    key = issue_key(acme)
    seen = simulator.state()["counters"]["requests_seen"]
    response = post(gateway_ready, key, path, body)
    assert response.status_code == 400, response.text
    error = response.json()["error"]
    assert set(error) == {"message", "type", "param", "code"} and error["param"] == param
    assert simulator.state()["counters"]["requests_seen"] == seen


@pytest.mark.parametrize("literal", [b"NaN", b"Infinity", b"-Infinity", b"1e400"])
def test_non_finite_numbers_are_a_400(gateway_ready, acme, issue_key, literal):
    response = post(gateway_ready, issue_key(acme), "/v1/chat/completions", CHAT + b'"temperature": ' + literal + b"}")
    assert response.status_code == 400 and response.json()["error"]["code"] == "invalid_json"


def test_unrecognized_arguments_answer_as_openai_does(gateway_ready, acme, issue_key):
    response = post(gateway_ready, issue_key(acme), "/v1/chat/completions", CHAT + b'"cache_salt": "guess"}')
    error = response.json()["error"]
    assert error == {"message": "Unrecognized request argument supplied: cache_salt",
                     "type": "invalid_request_error", "param": "cache_salt", "code": "unrecognized_request_argument"}
    ingested(1)


def test_allowed_extras_reach_the_model(gateway_ready, acme, issue_key):
    response = post(gateway_ready, issue_key(acme), "/v1/chat/completions",
                    CHAT + b'"top_k": 20, "min_p": 0.05, "repetition_penalty": 1.1, "min_tokens": 2, "max_tokens": 4,'
                    b' "user": "agent-7", "metadata": {"ticket": "42"}}')
    assert response.status_code == 200, response.text
    assert response.json()["usage"]["completion_tokens"] <= 4
