"""/v1/embeddings on the embedding model only; deterministic unit vectors."""

from __future__ import annotations

import base64
import math
import re
import struct

import pytest

from inference.tokens import count_text_tokens
from tests.fakes.vllm import RawResponse, SimulatorProcess, raw_request, shared_simulator

E5 = "intfloat/e5-mistral-7b-instruct"
CHAT_MODEL = "mistralai/Mistral-7B-Instruct-v0.3"


@pytest.fixture(scope="module")
def sim() -> SimulatorProcess:
    return shared_simulator()


def embed(sim: SimulatorProcess, **body) -> RawResponse:
    return raw_request(sim.url("/v1/embeddings"), json_body=body)


def vectors(sim: SimulatorProcess, **body) -> list[list[float]]:
    response = embed(sim, **body)
    assert response.status == 200, response.body
    return [item["embedding"] for item in response.json()["data"]]


def norm(vector: list[float]) -> float:
    return math.sqrt(sum(x * x for x in vector))


def test_response_shape_and_usage_counted_with_the_tokenizer(sim):
    response = embed(sim, model=E5, input="The customer asked about a refund.")
    assert response.status == 200
    body = response.json()
    assert list(body) == ["id", "object", "created", "model", "data", "usage"]
    assert re.fullmatch(r"embd-[0-9a-f]{16}", body["id"])
    assert (body["object"], body["model"]) == ("list", E5)
    assert list(body["data"][0]) == ["index", "object", "embedding"]
    assert (body["data"][0]["index"], body["data"][0]["object"]) == (0, "embedding")
    prompt = count_text_tokens(E5, "The customer asked about a refund.", bos=True)
    assert body["usage"] == {
        "prompt_tokens": prompt,
        "total_tokens": prompt,
        "completion_tokens": 0,
        "prompt_tokens_details": None,
        "completion_tokens_details": None,
    }


def test_vectors_are_4096_wide_unit_norm_and_deterministic(sim):
    [first] = vectors(sim, model=E5, input="hello")
    [again] = vectors(sim, model=E5, input="hello")
    [other] = vectors(sim, model=E5, input="hello!")
    assert len(first) == 4096
    assert norm(first) == pytest.approx(1.0, abs=1e-5)
    assert first == again
    assert first != other
    assert abs(sum(a * b for a, b in zip(first, other, strict=True))) < 0.2  # unrelated inputs, unrelated vectors


def test_list_input_gives_one_vector_per_item_in_order_and_model_is_optional(sim):
    response = embed(sim, input=["one", "two", "one"])
    body = response.json()
    assert body["model"] == E5
    assert [d["index"] for d in body["data"]] == [0, 1, 2]
    assert body["data"][0]["embedding"] == body["data"][2]["embedding"] != body["data"][1]["embedding"]
    assert body["usage"]["prompt_tokens"] == sum(count_text_tokens(E5, t, bos=True) for t in ["one", "two", "one"])


def test_base64_encoding_carries_the_same_float32_vector(sim):
    [floats] = vectors(sim, input="same input")
    [encoded] = vectors(sim, input="same input", encoding_format="base64")
    raw = base64.b64decode(encoded)
    decoded = struct.unpack(f"<{len(raw) // 4}f", raw)
    assert len(decoded) == 4096
    assert decoded == pytest.approx(floats, abs=1e-7)


def test_dimensions_shortens_and_renormalises(sim):
    [short] = vectors(sim, input="matryoshka", dimensions=256)
    assert len(short) == 256
    assert norm(short) == pytest.approx(1.0, abs=1e-5)
    response = embed(sim, input="x", dimensions=5000)
    assert response.status == 400
    assert response.json()["error"]["param"] == "dimensions"


def test_chat_model_has_no_embeddings_route(sim):
    # A vLLM server running a generate model never mounts the embeddings router.
    response = embed(sim, model=CHAT_MODEL, input="x")
    assert response.status == 404
    assert response.body == b'{"error":{"message":"Not Found","type":"Not Found","param":null,"code":404}}'


def test_embedding_model_has_no_chat_route(sim):
    response = raw_request(
        sim.url("/v1/chat/completions"), json_body={"model": E5, "messages": [{"role": "user", "content": "x"}]}
    )
    assert response.status == 404
    assert response.json()["error"]["type"] == "Not Found"


def test_unknown_model_lists_the_embedding_alias(sim):
    response = embed(sim, model="nope", input="x")
    assert response.status == 404
    assert response.json() == {
        "error": {
            "message": f"The model `nope` does not exist. Valid aliases: {E5}.",
            "type": "NotFoundError",
            "param": "model",
            "code": 404,
        }
    }
