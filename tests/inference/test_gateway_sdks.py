"""Both SDKs work unchanged against the gateway, apart from base URL and key."""

from __future__ import annotations

import openai
import pytest
from mistralai.client import Mistral
from mistralai.client.errors import SDKError

from tests.conftest import ingested

MODEL = "mistralai/Mistral-7B-Instruct-v0.3"
EMBED = "intfloat/e5-mistral-7b-instruct"

pytestmark = pytest.mark.django_db(transaction=True)


@pytest.fixture
def key(acme, issue_key):
    return issue_key(acme)


@pytest.fixture
def oa(gateway_ready, key):
    return openai.OpenAI(base_url=f"{gateway_ready.base_url}/v1", api_key=key, max_retries=0)


@pytest.fixture
def mistral(gateway_ready, key):
    return Mistral(api_key=key, server_url=gateway_ready.base_url)


# --- openai ------------------------------------------------------------------------------------------
def test_openai_chat_json(oa):
    reply = oa.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": "Hi"}], max_tokens=5)
    assert reply.object == "chat.completion" and reply.choices[0].finish_reason in {"stop", "length"}
    assert reply.usage.total_tokens == reply.usage.prompt_tokens + reply.usage.completion_tokens
    [event] = ingested(1)
    assert event.completion_tokens == reply.usage.completion_tokens


def test_openai_chat_stream_without_and_with_usage(oa):
    plain = list(oa.chat.completions.create(
        model=MODEL, messages=[{"role": "user", "content": "Hi"}], max_tokens=6, stream=True))
    assert plain[0].choices[0].delta.role == "assistant"
    assert plain[-1].choices[0].finish_reason == "length" and all(c.usage is None for c in plain)
    with_usage = list(oa.chat.completions.create(
        model=MODEL, messages=[{"role": "user", "content": "Hi"}], max_tokens=6, stream=True,
        stream_options={"include_usage": True}))
    assert with_usage[-1].usage.completion_tokens == 6
    events = ingested(2)
    assert [e.completion_tokens for e in events] == [6, 6]


def test_openai_completions_json_and_stream(oa):
    reply = oa.completions.create(model=MODEL, prompt="Once upon a time", max_tokens=7)
    assert reply.object == "text_completion" and reply.usage.completion_tokens == 7
    chunks = list(oa.completions.create(model=MODEL, prompt="Once upon a time", max_tokens=7, stream=True))
    assert "".join(c.choices[0].text for c in chunks if c.choices) == reply.choices[0].text
    assert [e.completion_tokens for e in ingested(2)] == [7, 7]


def test_openai_embeddings(oa):
    result = oa.embeddings.create(model=EMBED, input=["G'day", "Hello"])
    assert len(result.data) == 2 and len(result.data[0].embedding) == 4096
    assert result.usage.prompt_tokens > 0
    [event] = ingested(1)
    assert event.endpoint == "embeddings" and event.prompt_tokens == result.usage.prompt_tokens


def test_openai_models(oa):
    ids = {m.id for m in oa.models.list().data}
    assert {MODEL, EMBED} <= ids
    assert oa.models.retrieve(MODEL).id == MODEL


@pytest.mark.parametrize(
    ("call", "exception", "status"),
    [
        (lambda c: c.chat.completions.create(model="nope", messages=[{"role": "user", "content": "x"}]),
         openai.NotFoundError, 404),
        (lambda c: c.chat.completions.create(model=MODEL, messages=[{"role": "robot", "content": "x"}]),
         openai.BadRequestError, 400),
        (lambda c: c.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": "x"}],
                                             temperature=-1), openai.BadRequestError, 400),
        (lambda c: c.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": "x " * 40000}]),
         openai.BadRequestError, 400),
    ],
)
def test_openai_errors_map_to_sdk_exceptions(oa, call, exception, status):
    with pytest.raises(exception) as caught:
        call(oa)
    assert caught.value.status_code == status
    assert caught.value.body["message"]


def test_openai_bad_key_is_authentication_error(gateway_ready):
    client = openai.OpenAI(base_url=f"{gateway_ready.base_url}/v1", api_key="wtl_aaaaaaaaaaaa_nope", max_retries=0)
    with pytest.raises(openai.AuthenticationError):
        client.models.list()


def test_context_length_error_names_the_limit(oa):
    with pytest.raises(openai.BadRequestError) as caught:
        oa.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": "x " * 40000}])
    assert caught.value.code == "context_length_exceeded"
    assert "maximum context length is 32768 tokens" in caught.value.message


# --- mistralai ---------------------------------------------------------------------------------------
def test_mistral_chat_complete_with_random_seed_is_deterministic(mistral):
    first = mistral.chat.complete(model=MODEL, messages=[{"role": "user", "content": "Hi"}], max_tokens=12,
                                  random_seed=42)
    second = mistral.chat.complete(model=MODEL, messages=[{"role": "user", "content": "Hi"}], max_tokens=12,
                                   random_seed=42)
    assert first.choices[0].message.content == second.choices[0].message.content
    assert first.usage.prompt_tokens > 0


def test_mistral_stream_gets_usage_at_the_end(mistral):
    events = list(mistral.chat.stream(model=MODEL, messages=[{"role": "user", "content": "Hi"}], max_tokens=5))
    text = "".join(e.data.choices[0].delta.content or "" for e in events if e.data.choices)
    assert text
    assert events[-1].data.usage.completion_tokens == 5
    [event] = ingested(1)
    assert event.stream and event.completion_tokens == 5


def test_mistral_safe_prompt_reaches_the_backend_as_a_system_prompt(mistral):
    from inference.gateway.validation import MISTRAL_SAFE_PROMPT

    # The simulator echoes the last user message; the system prompt counts in prompt tokens.
    plain = mistral.chat.complete(model=MODEL, messages=[{"role": "user", "content": "/echo hi"}])
    safe = mistral.chat.complete(model=MODEL, messages=[{"role": "user", "content": "/echo hi"}], safe_prompt=True)
    assert safe.choices[0].message.content == "/echo hi"
    assert safe.usage.prompt_tokens > plain.usage.prompt_tokens + len(MISTRAL_SAFE_PROMPT.split()) // 2


def test_mistral_embeddings(mistral):
    result = mistral.embeddings.create(model=EMBED, inputs=["G'day"], output_dimension=16)
    assert len(result.data[0].embedding) == 16


def test_mistral_errors(mistral):
    with pytest.raises(SDKError) as caught:
        mistral.chat.complete(model="nope", messages=[{"role": "user", "content": "x"}])
    assert caught.value.status_code == 404
