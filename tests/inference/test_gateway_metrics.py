"""Prometheus metrics: restricted to internal callers or a token, and moved by real traffic."""

from __future__ import annotations

import re

import httpx
import pytest

from inference.gateway import metrics

MODEL = "mistralai/Mistral-7B-Instruct-v0.3"

pytestmark = pytest.mark.django_db(transaction=True)


def sample(text: str, name: str, **labels) -> float:
    wanted = ",".join(f'{k}="{v}"' for k, v in sorted(labels.items()))
    for line in text.splitlines():
        match = re.match(rf"^{re.escape(name)}\{{(.*)\}} (\S+)$", line)
        if match and ",".join(sorted(match.group(1).split(","))) == wanted:
            return float(match.group(2))
    return 0.0


def test_metrics_move_with_traffic(gateway_ready, acme, issue_key):
    key = issue_key(acme)
    before = httpx.get(f"{gateway_ready.base_url}/metrics").text
    response = httpx.post(
        f"{gateway_ready.base_url}/v1/chat/completions", headers={"Authorization": f"Bearer {key}"},
        json={"model": MODEL, "messages": [{"role": "user", "content": "Hi"}], "max_tokens": 3},
    )
    assert response.status_code == 200
    httpx.post(f"{gateway_ready.base_url}/v1/chat/completions", headers={"Authorization": f"Bearer {key}"},
               json={"model": "nope", "messages": [{"role": "user", "content": "Hi"}]})
    after = httpx.get(f"{gateway_ready.base_url}/metrics")
    assert after.status_code == 200 and after.headers["content-type"].startswith("text/plain")
    text = after.text
    labels = {"endpoint": "chat.completions", "model": MODEL, "status": "200"}
    assert sample(text, "wattle_requests_total", **labels) == sample(before, "wattle_requests_total", **labels) + 1
    assert sample(text, "wattle_tokens_total", model=MODEL, kind="completion") >= 3
    assert sample(text, "wattle_rejections_total", reason="model_not_found") >= 1
    assert sample(text, "wattle_backend_healthy", backend="sim-a") == 1.0
    assert "wattle_time_to_first_token_seconds_bucket" in text
    assert "wattle_gateway_overhead_seconds_bucket" in text
    assert "wattle_open_streams" in text and "wattle_pending_requests" in text


def test_metrics_refuse_traffic_that_came_through_a_proxy(portal_server):
    response = httpx.get(f"{portal_server.base_url}/metrics", headers={"X-Forwarded-For": "203.0.113.9"})
    assert response.status_code == 403


def test_metrics_token_opens_them_from_anywhere(portal_server, settings):
    settings.METRICS_TOKEN = "scrape-secret"
    proxied = {"X-Forwarded-For": "203.0.113.9"}
    assert httpx.get(f"{portal_server.base_url}/metrics", headers=proxied).status_code == 403
    assert httpx.get(f"{portal_server.base_url}/metrics",
                     headers={**proxied, "Authorization": "Bearer wrong"}).status_code == 403
    assert httpx.get(f"{portal_server.base_url}/metrics",
                     headers={**proxied, "Authorization": "Bearer scrape-secret"}).status_code == 200


@pytest.mark.parametrize(
    ("client", "headers", "allowed"),
    [
        (("127.0.0.1", 5000), {}, True),
        (("10.1.2.3", 5000), {}, True),
        (("203.0.113.9", 5000), {}, False),
        (("10.1.2.3", 5000), {b"x-forwarded-for": b"203.0.113.9"}, False),
        (None, {}, False),
    ],
)
def test_scrape_rule(client, headers, allowed):
    assert metrics.scrape_allowed({"client": client}, headers) is allowed
