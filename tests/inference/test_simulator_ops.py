"""Health, version, model list, Prometheus metrics and the tokenizer endpoints."""

from __future__ import annotations

import re

import pytest

from inference.tokens import count_text_tokens
from tests.fakes.vllm import SimulatorProcess, raw_request, shared_simulator

MODEL = "mistralai/Mistral-7B-Instruct-v0.3"
LARGE = "mistralai/Mistral-Large-Instruct-2411"
E5 = "intfloat/e5-mistral-7b-instruct"
HELLO = [{"role": "user", "content": "Hello, how are you?"}]
TTFT_BUCKETS = [
    "0.001", "0.005", "0.01", "0.02", "0.04", "0.06", "0.08", "0.1", "0.25", "0.5", "0.75",
    "1.0", "2.5", "5.0", "7.5", "10.0", "20.0", "40.0", "80.0", "160.0", "640.0", "2560.0", "+Inf",
]  # fmt: skip


@pytest.fixture(scope="module")
def sim() -> SimulatorProcess:
    return shared_simulator()


def metrics(sim: SimulatorProcess) -> str:
    response = raw_request(sim.url("/metrics"), method="GET")
    assert response.status == 200
    assert response.headers["Content-Type"] == "text/plain; version=0.0.4; charset=utf-8"
    return response.body.decode()


def sample(text: str, name: str, **labels: str) -> float:
    rendered = ",".join(f'{k}="{v}"' for k, v in sorted({"engine": "0", **labels}.items()))
    match = re.search(rf"^{re.escape(name)}\{{{re.escape(rendered)}\}} (\S+)$", text, re.MULTILINE)
    assert match, f"{name}{{{rendered}}} not exported"
    return float(match.group(1))


@pytest.mark.parametrize(("method", "path"), [("GET", "/health"), ("GET", "/ping"), ("POST", "/ping")])
def test_health_and_ping_answer_200_with_an_empty_body(sim, method, path):
    response = raw_request(sim.url(path), method=method)
    assert (response.status, response.body) == (200, b"")


def test_version(sim):
    response = raw_request(sim.url("/version"), method="GET")
    assert (response.status, response.body) == (200, b'{"version":"0.33.0"}')


def test_model_list_has_vllm_model_cards(sim):
    body = raw_request(sim.url("/v1/models"), method="GET").json()
    assert body["object"] == "list"
    assert [card["id"] for card in body["data"]] == [MODEL, LARGE, E5]
    card = body["data"][0]
    assert list(card) == ["id", "object", "created", "owned_by", "root", "parent", "max_model_len", "permission"]
    assert (card["object"], card["owned_by"], card["root"], card["parent"], card["max_model_len"]) == (
        "model", "vllm", MODEL, None, 32768,
    )  # fmt: skip
    [permission] = card["permission"]
    assert list(permission) == [
        "id", "object", "created", "allow_create_engine", "allow_sampling", "allow_logprobs", "allow_search_indices",
        "allow_view", "allow_fine_tuning", "organization", "group", "is_blocking",
    ]  # fmt: skip
    assert re.fullmatch(r"modelperm-[0-9a-f]{16}", permission["id"])
    assert permission["object"] == "model_permission"
    assert (permission["allow_sampling"], permission["allow_create_engine"], permission["organization"]) == (
        True, False, "*",
    )  # fmt: skip


def test_metrics_expose_vllm_names_with_model_and_engine_labels(sim):
    text = metrics(sim)
    for model in (MODEL, LARGE, E5):
        for name in ("vllm:num_requests_running", "vllm:num_requests_waiting", "vllm:kv_cache_usage_perc",
                     "vllm:prompt_tokens_total", "vllm:generation_tokens_total"):  # fmt: skip
            sample(text, name, model_name=model)
        for reason in ("stop", "length", "abort", "error"):
            sample(text, "vllm:request_success_total", model_name=model, finished_reason=reason)
    assert "# TYPE vllm:time_to_first_token_seconds histogram" in text
    assert "# TYPE vllm:prompt_tokens_total counter" in text
    assert "# TYPE vllm:num_requests_running gauge" in text
    buckets = re.findall(
        rf'^vllm:time_to_first_token_seconds_bucket\{{engine="0",le="([^"]+)",model_name="{re.escape(MODEL)}"\}}',
        text,
        re.MULTILINE,
    )
    assert buckets == TTFT_BUCKETS


def test_metrics_count_tokens_and_finished_requests(sim):
    before = metrics(sim)
    response = raw_request(
        sim.url("/v1/chat/completions"), json_body={"model": LARGE, "messages": HELLO, "seed": 9}
    ).json()
    raw_request(sim.url("/v1/chat/completions"), json_body={"model": LARGE, "messages": HELLO, "max_tokens": 2})
    after = metrics(sim)

    def delta(name: str, **labels: str) -> float:
        return sample(after, name, model_name=LARGE, **labels) - sample(before, name, model_name=LARGE, **labels)

    assert delta("vllm:prompt_tokens_total") == 2 * response["usage"]["prompt_tokens"]
    assert delta("vllm:generation_tokens_total") == response["usage"]["completion_tokens"] + 2
    assert delta("vllm:request_success_total", finished_reason="stop") == 1
    assert delta("vllm:request_success_total", finished_reason="length") == 1
    assert delta("vllm:time_to_first_token_seconds_count") == 2
    assert delta("vllm:e2e_request_latency_seconds_count") == 2
    assert sample(after, "vllm:num_requests_running", model_name=LARGE) == 0
    assert sample(after, "vllm:kv_cache_usage_perc", model_name=LARGE) == 0


def test_tokenize_prompt_and_messages(sim):
    response = raw_request(sim.url("/tokenize"), json_body={"model": MODEL, "prompt": "Hello, how are you?"})
    assert response.body == (
        b'{"count":7,"max_model_len":32768,"tokens":[1,23325,29493,1678,1228,1136,29572],"token_strs":null}'
    )
    body = raw_request(sim.url("/tokenize"), json_body={"model": MODEL, "messages": HELLO}).json()
    assert body == {
        "count": 9,
        "max_model_len": 32768,
        "tokens": [1, 3, 23325, 29493, 1678, 1228, 1136, 29572, 4],
        "token_strs": None,
    }
    no_bos = raw_request(sim.url("/tokenize"), json_body={"prompt": "Hello", "add_special_tokens": False}).json()
    assert no_bos["count"] == count_text_tokens(MODEL, "Hello")
    strs = raw_request(sim.url("/tokenize"), json_body={"prompt": "Hello", "return_token_strs": True}).json()
    assert strs["token_strs"] == ["<s>", "▁Hello"]


def test_detokenize(sim):
    response = raw_request(sim.url("/detokenize"), json_body={"model": MODEL, "tokens": [1, 23325, 29493, 1678]})
    assert response.body == b'{"prompt":"Hello, how"}'
    bad = raw_request(sim.url("/detokenize"), json_body={"tokens": [10**9]})
    assert bad.status == 400


def test_tokenize_unknown_model_is_404(sim):
    response = raw_request(sim.url("/tokenize"), json_body={"model": "nope", "prompt": "x"})
    assert response.status == 404
    assert response.json()["error"]["param"] == "model"
