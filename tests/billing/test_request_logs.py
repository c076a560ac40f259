"""The request log: a tenant's own requests, newest first, paged by cursor (never by offset), filterable, and
closed to everyone else."""

from __future__ import annotations

from datetime import timedelta
from decimal import Decimal

import pytest
from django.test import Client
from django.urls import reverse
from django.utils import timezone

from billing.models import ModelPrice, UsageEvent
from billing.request_logs import PAGE_SIZE, request_log_page
from tests.conftest import sign_in

pytestmark = pytest.mark.django_db


def events(tenant, count: int, *, start=None, **fields) -> list[UsageEvent]:
    start = start or timezone.now() - timedelta(hours=1)
    rows = [
        UsageEvent(
            request_id=f"{tenant.slug}-{fields.get('model', 'm')}-{n}-{start.timestamp()}", tenant=tenant,
            endpoint="chat.completions", model=fields.get("model", "mistral-small"),
            key_id=fields.get("key_id", "k1"), status=fields.get("status", 200), prompt_tokens=100,
            completion_tokens=n, duration_ms=12.0, created_at=start + timedelta(seconds=n),
        )
        for n in range(count)
    ]
    return UsageEvent.objects.bulk_create(rows)


def url(tenant) -> str:
    return reverse("tenant_request_logs", args=[tenant.slug])


def test_pages_walk_every_request_once_newest_first(acme):
    # Ties on the timestamp too: the id breaks them, so no row is skipped or repeated across pages.
    same_time = timezone.now() - timedelta(minutes=5)
    events(acme, PAGE_SIZE * 2 + 7)
    UsageEvent.objects.bulk_create([
        UsageEvent(request_id=f"tie-{n}", tenant=acme, endpoint="chat.completions", model="m", status=200,
                   created_at=same_time) for n in range(PAGE_SIZE + 3)
    ])
    seen, after = [], None
    while True:
        page, after = request_log_page(tenant=acme, after=after and _decode(after))
        seen.extend(page)
        if after is None:
            break
    assert len(seen) == len({e.pk for e in seen}) == PAGE_SIZE * 3 + 10
    assert [(e.created_at, e.pk) for e in seen] == sorted(((e.created_at, e.pk) for e in seen), reverse=True)


def _decode(cursor):
    from billing.request_logs import decode_cursor

    return decode_cursor(cursor)


def test_the_owner_sees_requests_with_their_cost_and_follows_the_older_link(owner_client, acme, bluegum):
    ModelPrice.objects.create(model="mistral-small", input_per_1k_aud=Decimal("0.001"),
                              output_per_1k_aud=Decimal("0.003"))
    events(acme, PAGE_SIZE + 1)
    events(bluegum, 3, model="bluegum-secret-model")
    response = owner_client.get(url(acme))
    assert response.status_code == 200
    body = response.content.decode()
    assert body.count("<tr>") == PAGE_SIZE + 1  # header row + one page
    assert "bluegum-secret-model" not in body
    # The newest row: 100 input tokens at A$0.001/1k + 50 output at A$0.003/1k = A$0.000250.
    assert "<td>A$0.00025</td>" in body  # below a cent: to the micro-dollar (core.money.format_cost)
    older = response.context["next_cursor"]
    assert older
    second = owner_client.get(url(acme), {"after": older})
    assert second.status_code == 200 and second.content.decode().count("<tr>") == 2


def test_filters_narrow_by_key_model_and_outcome(acme):
    events(acme, 5, key_id="aaa")
    events(acme, 4, key_id="bbb", model="mistral-large")
    events(acme, 3, key_id="bbb", status=429)
    assert len(request_log_page(tenant=acme, key="aaa")[0]) == 5
    assert len(request_log_page(tenant=acme, model="mistral-large")[0]) == 4
    assert len(request_log_page(tenant=acme, outcome="error")[0]) == 3
    assert len(request_log_page(tenant=acme, key="bbb", outcome="ok")[0]) == 4


def test_the_period_bounds_what_is_shown(acme):
    events(acme, 2, start=timezone.now() - timedelta(days=10))
    events(acme, 3)
    assert len(request_log_page(tenant=acme, days=7)[0]) == 3
    assert len(request_log_page(tenant=acme, days=31)[0]) == 5


@pytest.mark.parametrize("query", [
    {"after": "not-a-cursor"}, {"after": "1e999_3"}, {"days": "9999"}, {"key": "wtl_$(rm)"}, {"outcome": "maybe"},
    {"model": "x" * 5000},
])
def test_malformed_filters_are_a_form_error_not_a_500(owner_client, acme, query):
    response = owner_client.get(url(acme), query)
    assert response.status_code == 400
    assert 'role="alert"' in response.content.decode() or "errorlist" in response.content.decode()


def test_another_tenants_log_is_a_404_and_anonymous_is_sent_to_sign_in(owner_client, acme, bluegum, client):
    assert owner_client.get(url(bluegum)).status_code == 404
    response = client.get(url(acme))
    assert response.status_code == 302 and "/accounts/login/" in response["Location"]


@pytest.mark.parametrize(("role", "status"), [("developer", 200), ("billing", 200), ("agent", 403)])
def test_roles_that_see_usage_see_the_log(acme, member_of, role, status):
    user = member_of(acme, role)
    assert sign_in(Client(), user).get(url(acme)).status_code == status
