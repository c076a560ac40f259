"""What the data plane does with key changes made in the control plane: rotation's grace period, revocation
and suspension, each within a second and without a database on the request path."""

from __future__ import annotations

import time
from datetime import timedelta

import httpx
import pytest

from tenants import keys
from tenants.models import ApiKey
from tenants.services import api_key_revoke, api_key_rotate, tenant_set_status

pytestmark = pytest.mark.django_db(transaction=True)

MODEL = "mistralai/Mistral-7B-Instruct-v0.3"


def _status(server, key: str) -> int:
    return httpx.post(
        f"{server.base_url}/v1/chat/completions", headers={"Authorization": f"Bearer {key}"},
        json={"model": MODEL, "messages": [{"role": "user", "content": "Hi"}], "max_tokens": 2}, timeout=10,
    ).status_code


def _within_a_second(server, key: str, expected: int) -> float:
    started = time.monotonic()
    while time.monotonic() - started < 2:
        if _status(server, key) == expected:
            return time.monotonic() - started
        time.sleep(0.02)
    pytest.fail(f"/v1 did not answer {expected} within 2 s")


def test_rotated_key_serves_both_secrets_during_the_grace_period(gateway_ready, acme, issue_key,
                                                                 django_capture_on_commit_callbacks):
    old = issue_key(acme)
    assert _status(gateway_ready, old) == 200
    api_key = ApiKey.objects.get(key_id=keys.parse_key(old)[0])
    with django_capture_on_commit_callbacks(execute=True):
        new = api_key_rotate(api_key=api_key, grace=timedelta(hours=1)).plaintext
    assert _within_a_second(gateway_ready, new, 200) < 1.0
    assert _status(gateway_ready, old) == 200  # still inside the grace period
    with django_capture_on_commit_callbacks(execute=True):
        api_key_rotate(api_key=api_key, grace=timedelta(0))  # rotate again, no grace: both old secrets stop
    assert _within_a_second(gateway_ready, old, 401) < 1.0
    assert _status(gateway_ready, new) == 401


def test_revocation_and_suspension_reach_the_data_plane_within_a_second(gateway_ready, acme, issue_key,
                                                                        django_capture_on_commit_callbacks):
    key = issue_key(acme)
    other = issue_key(acme)
    assert _status(gateway_ready, key) == 200 and _status(gateway_ready, other) == 200
    with django_capture_on_commit_callbacks(execute=True):
        api_key_revoke(api_key=ApiKey.objects.get(key_id=keys.parse_key(key)[0]))
    assert _within_a_second(gateway_ready, key, 401) < 1.0
    with django_capture_on_commit_callbacks(execute=True):
        tenant_set_status(tenant=acme, status="suspended", reason="unpaid invoice")
    assert _within_a_second(gateway_ready, other, 402) < 1.0
    with django_capture_on_commit_callbacks(execute=True):
        tenant_set_status(tenant=acme, status="active", reason="paid")
    assert _within_a_second(gateway_ready, other, 200) < 1.0
