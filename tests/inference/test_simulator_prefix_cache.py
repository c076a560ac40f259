"""The simulator's prefix cache and vLLM's `cache_salt`: accepted as vLLM accepts it, and isolating cached
prompts by salt as vLLM does (the salt is mixed into the hash of a prompt's first block)."""

from __future__ import annotations

import uuid

import pytest

from tests.fakes.vllm import SimulatorProcess, raw_request, run_simulator

MODEL = "mistralai/Mistral-7B-Instruct-v0.3"


@pytest.fixture(scope="module")
def sim() -> SimulatorProcess:
    with run_simulator() as simulator:  # its own: the tests read counters other requests would move
        yield simulator


def hits(sim: SimulatorProcess) -> int:
    return sim.state()["counters"]["prefix_cache_hits"]


def chat(sim: SimulatorProcess, prompt: str, **body):
    response = raw_request(sim.url("/v1/chat/completions"), json_body={
        "model": MODEL, "messages": [{"role": "user", "content": prompt}], "max_tokens": 2, **body})
    assert response.status == 200, response.body
    return response.json()


def test_a_prompt_is_cached_per_salt(sim):
    prompt = f"A long shared system prompt {uuid.uuid4()}"
    before = hits(sim)
    tokens = chat(sim, prompt, cache_salt="tenant-a")["usage"]["prompt_tokens"]
    assert hits(sim) == before  # first sight: a miss
    chat(sim, prompt, cache_salt="tenant-a")
    assert hits(sim) == before + tokens  # the same salt: a hit
    chat(sim, prompt, cache_salt="tenant-b")
    chat(sim, prompt)
    assert hits(sim) == before + tokens  # another salt, or none: never the first one's cache
    chat(sim, prompt, cache_salt="tenant-b")
    assert hits(sim) == before + 2 * tokens


def test_completion_prompts_are_cached_per_salt(sim):
    prompt = f"Once upon a time {uuid.uuid4()}"
    body = {"model": MODEL, "prompt": prompt, "max_tokens": 2}
    before = hits(sim)
    for salt in ("a", "b", "a"):
        response = raw_request(sim.url("/v1/completions"), json_body={**body, "cache_salt": salt})
        assert response.status == 200, response.body
    assert hits(sim) > before
    assert sim.state()["counters"]["prefix_cache_queries"] > 0


@pytest.mark.parametrize("salt", ["", 5, ["a"]])
@pytest.mark.parametrize("path", ["/v1/chat/completions", "/v1/completions"])
def test_a_salt_that_is_not_a_non_empty_string_is_refused_as_vllm_does(sim, path, salt):
    body = {"model": MODEL, "max_tokens": 2, "cache_salt": salt}
    body.update({"messages": [{"role": "user", "content": "Hi"}]} if "chat" in path else {"prompt": "Hi"})
    response = raw_request(sim.url(path), json_body=body)
    assert response.status == 400
    assert "Parameter 'cache_salt' must be a non-empty string if provided." in response.json()["error"]["message"]
