"""The real openai SDK as a client of the simulator (protocol reference §7)."""

from __future__ import annotations

import math

import openai
import pytest

from inference.tokens import count_text_tokens
from tests.fakes.vllm import SimulatorProcess, shared_simulator

MODEL = "mistralai/Mistral-7B-Instruct-v0.3"
E5 = "intfloat/e5-mistral-7b-instruct"
HELLO = [{"role": "user", "content": "Hello, how are you?"}]


@pytest.fixture(scope="module")
def sim() -> SimulatorProcess:
    return shared_simulator()


@pytest.fixture(scope="module")
def client(sim: SimulatorProcess) -> openai.OpenAI:
    return openai.OpenAI(base_url=sim.openai_base_url, api_key="unused", max_retries=0)


def test_chat_completion(client):
    response = client.chat.completions.create(model=MODEL, messages=HELLO, seed=1)
    assert response.object == "chat.completion"
    assert response.model == MODEL
    assert response.system_fingerprint.startswith("vllm-0.33.0-")
    choice = response.choices[0]
    assert choice.finish_reason == "stop"
    assert choice.message.role == "assistant"
    assert response.usage.prompt_tokens == 9
    assert response.usage.completion_tokens == count_text_tokens(MODEL, choice.message.content)
    assert choice.model_extra["stop_reason"] is None  # vLLM extras survive in model_extra


def test_chat_stream_with_usage_matches_the_non_stream_reply(client):
    reference = client.chat.completions.create(model=MODEL, messages=HELLO, seed=4)
    chunks = list(
        client.chat.completions.create(
            model=MODEL, messages=HELLO, seed=4, stream=True, stream_options={"include_usage": True}
        )
    )
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == reference.choices[0].message.content
    assert chunks[0].choices[0].delta.role == "assistant"
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == "stop"
    assert chunks[-1].choices == []
    assert chunks[-1].usage.prompt_tokens == 9
    assert chunks[-1].usage.completion_tokens == reference.usage.completion_tokens
    assert len({c.id for c in chunks}) == 1


def test_completion(client):
    response = client.completions.create(model=MODEL, prompt="Say something", max_tokens=5, seed=2)
    assert response.object == "text_completion"
    assert response.choices[0].finish_reason == "length"
    assert response.usage.completion_tokens == 5
    assert response.usage.prompt_tokens == count_text_tokens(MODEL, "Say something", bos=True)


def test_embeddings_decode_from_the_sdk_default_base64(client):
    response = client.embeddings.create(model=E5, input=["alpha", "beta"])
    assert [d.index for d in response.data] == [0, 1]
    vector = response.data[0].embedding
    assert len(vector) == 4096
    assert math.sqrt(sum(x * x for x in vector)) == pytest.approx(1.0, abs=1e-5)
    floats = client.embeddings.create(model=E5, input="alpha", encoding_format="float").data[0].embedding
    assert floats == pytest.approx(vector, abs=1e-6)
    assert response.usage.prompt_tokens == count_text_tokens(E5, "alpha", bos=True) + count_text_tokens(
        E5, "beta", bos=True
    )


def test_models_list(client):
    assert [m.id for m in client.models.list()] == [MODEL, "mistralai/Mistral-Large-Instruct-2411", E5]


def test_unknown_model_raises_not_found_with_vllm_error_body(client):
    with pytest.raises(openai.NotFoundError) as raised:
        client.chat.completions.create(model="gpt-4o", messages=HELLO)
    assert raised.value.status_code == 404
    assert raised.value.body == {
        "message": "The model `gpt-4o` does not exist. Valid aliases: "
        "mistralai/Mistral-7B-Instruct-v0.3, mistralai/Mistral-Large-Instruct-2411.",
        "type": "NotFoundError",
        "param": "model",
        "code": 404,
    }


def test_bad_request_raises_bad_request_error(client):
    with pytest.raises(openai.BadRequestError) as raised:
        client.chat.completions.create(model=MODEL, messages=HELLO, tools=[])
    assert raised.value.body["param"] == "tools"


def test_wrong_api_key_raises_authentication_error():
    locked = shared_simulator(max_model_len=48, api_keys=["sk-first", "sk-second"])
    wrong = openai.OpenAI(base_url=locked.openai_base_url, api_key="sk-wrong", max_retries=0)
    with pytest.raises(openai.AuthenticationError) as raised:
        wrong.models.list()
    assert raised.value.status_code == 401
    right = openai.OpenAI(base_url=locked.openai_base_url, api_key="sk-second", max_retries=0)
    assert right.chat.completions.create(model=MODEL, messages=HELLO, max_tokens=2).usage.completion_tokens == 2
