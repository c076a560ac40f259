"""Admission reserves at least what vLLM can bill, end to end against the simulator: no request uses more tokens
than it reserved, so a budget is overshot by at most one request's reservation."""

from __future__ import annotations

import httpx
import orjson
import pytest
from django.conf import settings

from billing import services
from tests.conftest import wait_for

MODEL = "mistralai/Mistral-7B-Instruct-v0.3"
TPM = 1_000_000

pytestmark = pytest.mark.django_db(transaction=True)


def post(server, key, path="/v1/chat/completions", **body):
    return httpx.post(f"{server.base_url}{path}", headers={"Authorization": f"Bearer {key}"},
                      json={"model": MODEL, **body}, timeout=60)


def limited_key(server, tenant, issue_key, django_capture_on_commit_callbacks, *, tpm: int = TPM) -> str:
    key = issue_key(tenant)
    with django_capture_on_commit_callbacks(execute=True):
        services.tenant_quota_set(tenant=tenant, rpm_limit=1000, tpm_limit=tpm)
    probe = {"messages": [{"role": "user", "content": "Hi"}], "max_tokens": 1}
    wait_for(lambda: post(server, key, **probe).headers.get("x-ratelimit-limit-tokens") == str(tpm), timeout=5)
    return key


def reserved(response, tpm: int = TPM) -> int:
    """What admission reserved for this request: a fresh minute's limit minus what it left."""
    return tpm - int(response.headers["x-ratelimit-remaining-tokens"])


def test_without_max_tokens_a_long_reply_stops_at_what_was_reserved(gateway_ready, acme, issue_key,
                                                                   django_capture_on_commit_callbacks):
    key = limited_key(gateway_ready, acme, issue_key, django_capture_on_commit_callbacks)
    cap = settings.INFERENCE_DEFAULT_COMPLETION_RESERVE
    # The simulator repeats an /echo prompt: this one would run to ~1,500 tokens with no cap sent upstream.
    response = post(gateway_ready, key, messages=[{"role": "user", "content": "/echo " + "word " * 1500}])
    assert response.status_code == 200, response.text
    usage = response.json()["usage"]
    assert response.json()["choices"][0]["finish_reason"] == "length"
    assert usage["completion_tokens"] == cap
    assert usage["prompt_tokens"] + usage["completion_tokens"] <= reserved(response)


def test_streams_and_several_choices_stay_within_their_reservation(gateway_ready, acme, issue_key,
                                                                  django_capture_on_commit_callbacks):
    key = limited_key(gateway_ready, acme, issue_key, django_capture_on_commit_callbacks)
    with httpx.stream(
        "POST", f"{gateway_ready.base_url}/v1/chat/completions", headers={"Authorization": f"Bearer {key}"},
        json={"model": MODEL, "messages": [{"role": "user", "content": "/echo " + "word " * 1500}], "n": 2,
              "stream": True, "stream_options": {"include_usage": True}},
        timeout=60,
    ) as response:
        lines = [line for line in response.iter_lines() if line.startswith("data: {")]
    usage = orjson.loads(lines[-1][6:])["usage"]
    assert usage["completion_tokens"] == 2 * settings.INFERENCE_DEFAULT_COMPLETION_RESERVE
    assert usage["prompt_tokens"] + usage["completion_tokens"] <= reserved(response)


def test_a_batch_reserves_the_sum_of_its_prompts_times_its_choices(gateway_ready, acme, issue_key,
                                                                  django_capture_on_commit_callbacks):
    key = limited_key(gateway_ready, acme, issue_key, django_capture_on_commit_callbacks)
    response = post(gateway_ready, key, "/v1/completions", prompt=["/echo " + "word " * 200] * 3, n=2,
                    max_tokens=5)
    assert response.status_code == 200, response.text
    usage = response.json()["usage"]
    assert usage["prompt_tokens"] > 600 and usage["completion_tokens"] == 3 * 2 * 5
    assert reserved(response) >= usage["prompt_tokens"] + usage["completion_tokens"]


def test_a_batch_larger_than_the_token_limit_is_refused(gateway_ready, acme, issue_key,
                                                        django_capture_on_commit_callbacks):
    """Each prompt fits a 2,000-token minute, the batch doesn't: refused, not admitted on its largest prompt."""
    key = limited_key(gateway_ready, acme, issue_key, django_capture_on_commit_callbacks, tpm=2000)
    response = post(gateway_ready, key, "/v1/completions", prompt=["word " * 300] * 8, max_tokens=1)
    assert response.status_code == 429, response.text
    assert response.json()["error"]["type"] == "tokens"


def test_n_above_the_cap_is_a_400(gateway_ready, acme, issue_key):
    key = issue_key(acme)
    response = post(gateway_ready, key, messages=[{"role": "user", "content": "Hi"}], n=100_000, max_tokens=5)
    assert response.status_code == 400
    error = response.json()["error"]
    assert error["param"] == "n" and f"at most {settings.INFERENCE_MAX_N}" in error["message"]
    ok = post(gateway_ready, key, messages=[{"role": "user", "content": "Hi"}], n=settings.INFERENCE_MAX_N,
              max_tokens=2)
    assert ok.status_code == 200 and len(ok.json()["choices"]) == settings.INFERENCE_MAX_N


@pytest.mark.parametrize("kind", ["token_ids", "strings"])
def test_a_batch_of_embeddings_reserves_every_input(gateway_ready, acme, issue_key, kind,
                                                    django_capture_on_commit_callbacks):
    """Each input fits the context, together they are many contexts' worth: all of it is reserved."""
    key = limited_key(gateway_ready, acme, issue_key, django_capture_on_commit_callbacks)
    from inference.gateway.app import gateway

    context = gateway.pool.max_model_len("intfloat/e5-mistral-7b-instruct")
    inputs = [[1] * (context - 10)] * 20 if kind == "token_ids" else ["word " * 2000] * 20
    response = post(gateway_ready, key, "/v1/embeddings", model="intfloat/e5-mistral-7b-instruct", input=inputs)
    assert response.status_code == 200, response.text
    usage = response.json()["usage"]
    assert usage["prompt_tokens"] > (10 * context if kind == "token_ids" else 20 * 2000)
    assert reserved(response) >= usage["prompt_tokens"]
