"""Limits as API clients see them: headers on every response, 429s the SDKs understand, and precedence of
plan defaults, tenant overrides (staff) and key overrides (never above the tenant's)."""

from __future__ import annotations

from decimal import Decimal

import httpx
import openai
import pytest

from billing import limits, services
from billing.models import Plan, UsageEvent
from billing.services import usage_ingest
from tenants.models import ApiKey
from tests.conftest import wait_for

MODEL = "mistralai/Mistral-7B-Instruct-v0.3"

pytestmark = pytest.mark.django_db(transaction=True)


def post(server, key, **body):
    return httpx.post(
        f"{server.base_url}/v1/chat/completions", headers={"Authorization": f"Bearer {key}"},
        json={"model": MODEL, "messages": [{"role": "user", "content": "Hi"}], "max_tokens": 5, **body}, timeout=30,
    )


@pytest.fixture
def plan():
    return services.plan_save(plan=Plan(slug="starter", name="Starter", rpm_limit=100, tpm_limit=100_000,
                                        is_default=True))


def test_every_response_carries_openais_rate_limit_headers(gateway_ready, acme, issue_key, plan):
    key = issue_key(acme)
    response = post(gateway_ready, key)
    assert response.status_code == 200
    headers = response.headers
    assert headers["x-ratelimit-limit-requests"] == "100"
    assert headers["x-ratelimit-remaining-requests"] == "99"
    assert headers["x-ratelimit-limit-tokens"] == "100000"
    assert int(headers["x-ratelimit-remaining-tokens"]) < 100_000
    assert headers["x-ratelimit-reset-requests"].endswith("s") and headers["x-ratelimit-reset-tokens"].endswith("s")


def test_over_the_rate_limit_is_429_with_retry_after(gateway_ready, acme, issue_key, plan,
                                                     django_capture_on_commit_callbacks):
    key = issue_key(acme)
    with django_capture_on_commit_callbacks(execute=True):
        services.tenant_quota_set(tenant=acme, rpm_limit=2)
    wait_for(lambda: post(gateway_ready, key).headers.get("x-ratelimit-limit-requests") == "2", timeout=3)
    statuses = [post(gateway_ready, key).status_code for _ in range(3)]
    assert 429 in statuses
    client = openai.OpenAI(base_url=f"{gateway_ready.base_url}/v1", api_key=key, max_retries=0)
    with pytest.raises(openai.RateLimitError) as caught:
        client.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": "Hi"}])
    error = caught.value
    assert error.code == "rate_limit_exceeded"
    assert 1 <= int(error.response.headers["retry-after"]) <= 60
    assert error.response.headers["x-ratelimit-reset-requests"]

    def refused_recorded():
        usage_ingest()
        return UsageEvent.objects.filter(status=429, error_code="rate_limit_exceeded").exists()

    wait_for(refused_recorded, timeout=5)


def test_exhausted_budget_is_429_insufficient_quota_naming_it(gateway_ready, acme, issue_key, plan,
                                                             django_capture_on_commit_callbacks):
    key = issue_key(acme)
    with django_capture_on_commit_callbacks(execute=True):
        services.tenant_quota_set(tenant=acme, monthly_token_budget=30)
    wait_for(lambda: post(gateway_ready, key).status_code == 429, timeout=5)
    response = post(gateway_ready, key)
    error = response.json()["error"]
    assert response.status_code == 429
    assert error["code"] == "insufficient_quota" and error["type"] == "insufficient_quota"
    assert "monthly token budget (30 tokens)" in error["message"] and "resets at 1 " in error["message"]
    assert int(response.headers["retry-after"]) > 60


def test_spend_cap_uses_published_prices(gateway_ready, acme, issue_key, plan, django_capture_on_commit_callbacks):
    key = issue_key(acme)
    with django_capture_on_commit_callbacks(execute=True):
        services.model_price_set(model=MODEL, input_per_1k_aud=Decimal("1.00"), output_per_1k_aud=Decimal("1.00"))
        services.tenant_quota_set(tenant=acme, monthly_spend_cap_aud=Decimal("0.05"))  # 50 tokens' worth
    wait_for(lambda: post(gateway_ready, key).status_code == 429, timeout=5)
    error = post(gateway_ready, key).json()["error"]
    assert "monthly spend cap (A$0.05)" in error["message"]


def test_key_limit_is_capped_at_the_tenants(gateway_ready, acme, issue_key, plan, django_capture_on_commit_callbacks):
    narrow = issue_key(acme, name="narrow")
    wide = issue_key(acme, name="wide")
    with django_capture_on_commit_callbacks(execute=True):
        services.tenant_quota_set(tenant=acme, rpm_limit=5)
        ApiKey.objects.filter(name="narrow").update(rpm_limit=2)
        ApiKey.objects.filter(name="wide").update(rpm_limit=50)
        from tenants import snapshot

        snapshot.publish_api_keys(list(ApiKey.objects.filter(tenant=acme)))  # the updates bypassed the services
    wait_for(lambda: post(gateway_ready, narrow).headers.get("x-ratelimit-limit-requests") == "2", timeout=3)
    assert post(gateway_ready, wide).headers["x-ratelimit-limit-requests"] == "5"


# --- precedence, resolved by the control plane -------------------------------------------------------
def test_plan_then_tenant_override_then_key_override(acme, plan):
    assert limits.tenant_limits(acme)["rpm_limit"] == 100  # the default plan
    services.tenant_quota_set(tenant=acme, rpm_limit=40)
    tenant_effective = limits.tenant_limits(acme)
    assert tenant_effective["rpm_limit"] == 40 and tenant_effective["tpm_limit"] == 100_000
    key = ApiKey(rpm_limit=10, tpm_limit=500_000)
    effective = limits.key_limits(key, tenant_effective)
    assert effective["rpm_limit"] == 10  # narrower than the tenant: kept
    assert effective["tpm_limit"] == 100_000  # wider than the tenant: capped
    assert effective["max_concurrent"] is None  # not set on the key: the tenant's limit covers it


def test_clearing_an_override_returns_to_the_plan(acme, plan):
    services.tenant_quota_set(tenant=acme, rpm_limit=40)
    services.tenant_quota_set(tenant=acme, rpm_limit=None)
    assert limits.tenant_limits(acme)["rpm_limit"] == 100


def test_a_tenant_on_another_plan(acme, plan):
    enterprise = services.plan_save(plan=Plan(slug="enterprise", name="Enterprise", rpm_limit=10_000))
    services.tenant_quota_set(tenant=acme, plan=enterprise)
    effective = limits.tenant_limits(acme)
    assert effective["rpm_limit"] == 10_000 and effective["tpm_limit"] is None


def test_spend_travels_as_micro_aud(acme, plan):
    services.tenant_quota_set(tenant=acme, monthly_spend_cap_aud=Decimal("12.34"))
    published = limits.for_data_plane(limits.tenant_limits(acme))
    assert published == {"rpm": 100, "tpm": 100_000, "month_spend": 12_340_000}


def test_limit_changes_are_audited(acme, plan, alice):
    from audit.models import AuditEntry

    services.tenant_quota_set(tenant=acme, actor=alice, tpm_limit=400_000)
    entry = AuditEntry.objects.get(action="tenant.limits.update")
    assert entry.actor == alice and entry.tenant == acme
    assert entry.data["before"]["tpm_limit"] is None and entry.data["after"]["tpm_limit"] == 400_000


# --- the limits check runs beside the upstream call -----------------------------------------------------
def _seen(simulator) -> tuple[int, int]:
    counters = simulator.state()["counters"]
    return counters["requests_seen"], counters["client_disconnects"]


@pytest.fixture
def slow_stream(simulator):
    simulator.control(tpot_ms=50.0)
    yield
    simulator.control(tpot_ms=0.0)


def test_refused_request_is_cancelled_upstream_billed_nothing_and_the_key_then_waits(
    gateway_ready, simulator, acme, issue_key, plan, slow_stream, django_capture_on_commit_callbacks
):
    key = issue_key(acme)
    with django_capture_on_commit_callbacks(execute=True):
        services.tenant_quota_set(tenant=acme, rpm_limit=1)
    wait_for(lambda: post(gateway_ready, key, max_tokens=1).headers.get("x-ratelimit-limit-requests") == "1",
             timeout=3)  # this minute's one request is used up by the time the limit shows
    seen, disconnects = _seen(simulator)

    # The first refusal: the request went to the replica while the check ran and was cancelled there, or the
    # check answered before it was sent and it never went.
    refused = post(gateway_ready, key, stream=True, max_tokens=20)
    assert refused.status_code == 429 and refused.json()["error"]["code"] == "rate_limit_exceeded"
    assert "data:" not in refused.text  # nothing of the replica's answer reached the client
    wait_for(lambda: _seen(simulator) in ((seen, disconnects), (seen + 1, disconnects + 1)), timeout=5)
    seen = _seen(simulator)[0]

    # Refused lately: this key's requests now wait for the check, so the replica never sees them.
    again = post(gateway_ready, key, stream=True, max_tokens=20)
    assert again.status_code == 429
    assert _seen(simulator)[0] == seen

    def refusals_recorded():
        usage_ingest()
        return UsageEvent.objects.filter(status=429).count() >= 2

    wait_for(refusals_recorded, timeout=5)
    for event in UsageEvent.objects.filter(status=429):
        assert (event.prompt_tokens, event.completion_tokens, event.backend) == (0, 0, "")


def test_with_parallel_checks_off_a_refused_request_never_reaches_the_replica(
    gateway_ready, simulator, acme, issue_key, plan, django_capture_on_commit_callbacks
):
    from inference.gateway.app import gateway

    key = issue_key(acme)
    with django_capture_on_commit_callbacks(execute=True):
        services.tenant_quota_set(tenant=acme, monthly_token_budget=1)
    gateway.dispatcher._limits_parallel = False
    try:
        wait_for(lambda: post(gateway_ready, key).status_code == 429, timeout=5)
        seen = _seen(simulator)[0]
        assert post(gateway_ready, key).status_code == 429
        assert _seen(simulator)[0] == seen
    finally:
        gateway.dispatcher._limits_parallel = True


def test_an_admitted_request_answers_with_its_limit_headers_when_checked_in_parallel(
    gateway_ready, acme, issue_key, plan
):
    key = issue_key(acme)
    client = openai.OpenAI(base_url=f"{gateway_ready.base_url}/v1", api_key=key, max_retries=0)
    raw = client.chat.completions.with_raw_response.create(
        model=MODEL, messages=[{"role": "user", "content": "Hi"}], max_tokens=3, stream=True,
    )
    assert raw.headers["x-ratelimit-limit-requests"] == "100"
    assert "".join(chunk.choices[0].delta.content or "" for chunk in raw.parse() if chunk.choices)


# --- a refused request never runs on the replica ----------------------------------------------------------
def _finished(simulator) -> dict[str, float]:
    """vLLM's own counters, scraped from the simulator: requests finished by reason, and tokens generated."""
    from prometheus_client.parser import text_string_to_metric_families

    with httpx.Client(timeout=10) as client:
        text = client.get(simulator.url("/metrics")).text
    out = {"generated": 0.0}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == "vllm:request_success_total":
                reason = sample.labels["finished_reason"]
                out[reason] = out.get(reason, 0.0) + sample.value
            elif sample.name == "vllm:generation_tokens_total":
                out["generated"] += sample.value
    return out


def _burst(server, key, count: int, **body) -> list[httpx.Response]:
    """``count`` requests sent at once (one connection each), answered in any order."""
    import asyncio

    async def run() -> list[httpx.Response]:
        async with httpx.AsyncClient(timeout=30, limits=httpx.Limits(max_connections=count)) as client:
            return await asyncio.gather(*(
                client.post(f"{server.base_url}/v1/chat/completions", headers={"Authorization": f"Bearer {key}"},
                            json={"model": MODEL, "messages": [{"role": "user", "content": "Hi"}], **body})
                for _ in range(count)
            ))

    return asyncio.run(run())


@pytest.fixture
def paced_tokens(simulator):
    simulator.control(tpot_ms=4.0)
    yield
    simulator.control(tpot_ms=0.0)


@pytest.mark.parametrize("stream", [False, True], ids=["json", "stream"])
def test_refused_requests_are_aborted_on_the_replica_not_generated(
    gateway_ready, simulator, acme, issue_key, plan, paced_tokens, stream, django_capture_on_commit_callbacks
):
    from inference.gateway.app import gateway

    key = issue_key(acme)
    with django_capture_on_commit_callbacks(execute=True):
        services.tenant_quota_set(tenant=acme, max_concurrent=1)
    wait_for(lambda: post(gateway_ready, key, max_tokens=1).status_code == 200, timeout=3)
    gateway.dispatcher._refused_at.clear()  # nothing refused lately: every request is checked beside its upstream call
    seen_before, before = _seen(simulator)[0], _finished(simulator)

    answers = _burst(gateway_ready, key, 8, max_tokens=40, stream=stream)

    statuses = sorted(a.status_code for a in answers)
    assert statuses == [200] + [429] * 7
    assert all("data:" not in a.text for a in answers if a.status_code == 429)
    # Refused requests may reach the replica (their check runs beside the upstream call) or not (the check
    # answered first); either way none of them may run there.
    reached = _seen(simulator)[0] - seen_before
    assert 1 <= reached <= 8

    def settled():
        after = _finished(simulator)
        return after.get("abort", 0) - before.get("abort", 0) == reached - 1
    wait_for(settled, timeout=5)
    after = _finished(simulator)
    completed = sum(after.get(r, 0) - before.get(r, 0) for r in ("stop", "length"))
    assert completed == 1  # only the admitted request ran to its end
    # The admitted request generated its 40 tokens; each refused one at most the token in flight when it was
    # cancelled (4 ms per token, and the check answers in well under that).
    assert after["generated"] - before["generated"] <= 40 + (reached - 1)


# --- a new organisation: on the Trial plan, so every answer carries the headers --------------------------
@pytest.mark.parametrize("stream", [False, True])
def test_a_new_organisations_answers_carry_the_trial_plans_rate_limit_headers(gateway_ready, acme, issue_key, stream):
    key = issue_key(acme)
    response = post(gateway_ready, key, stream=stream)
    assert response.status_code == 200
    headers = response.headers
    assert (headers["x-ratelimit-limit-requests"], headers["x-ratelimit-remaining-requests"]) == ("20", "19")
    assert headers["x-ratelimit-limit-tokens"] == "20000"
    assert 0 < int(headers["x-ratelimit-remaining-tokens"]) < 20_000
    assert headers["x-ratelimit-reset-requests"].endswith("s") and headers["x-ratelimit-reset-tokens"].endswith("s")
