"""The tenant console's views of billing's numbers: the usage page (billing's, at the console's address), the
recent requests on the overview and "last used" on the key pages (billing's, through its template tag and the
function it installs in ``tenants.hooks``). Who may see which page, and other tenants' 404s:
tests/tenants/test_isolation.py; the limits page and a key's quota: tests/tenants/test_limits_console.py."""

from __future__ import annotations

from datetime import timedelta

import pytest
from django.core.exceptions import ImproperlyConfigured
from django.urls import reverse
from django.utils import timezone

from billing.models import UsageEvent
from billing.rollups import rollups_update
from tenants import hooks, keys
from tenants.models import Role
from tenants.services import api_key_create
from tests.conftest import sign_in

pytestmark = pytest.mark.django_db


def used(tenant, key_id: str, *, request_id: str, model: str = "mistral-small", ago: timedelta = timedelta(0),
         prompt: int = 10, completion: int = 5) -> UsageEvent:
    return UsageEvent.objects.create(request_id=request_id, tenant=tenant, key_id=key_id, endpoint="chat.completions",
                                     model=model, status=200, prompt_tokens=prompt, completion_tokens=completion,
                                     created_at=timezone.now() - ago)


def test_usage_and_limits_pages_keep_their_addresses_and_names(acme):
    assert reverse("tenant_usage", args=[acme.slug]) == f"/t/{acme.slug}/usage/"
    assert reverse("tenant_limits", args=[acme.slug]) == f"/t/{acme.slug}/limits/"


def test_usage_page_totals_requests_by_model_and_key(owner_client, acme, bluegum, issue_key):
    key_id = keys.parse_key(issue_key(acme, name="IVR production"))[0]
    used(acme, key_id, request_id="r1", prompt=1_200, completion=300)
    used(acme, key_id, request_id="r2", model="mistral-large", prompt=800, completion=700)
    used(bluegum, "other", request_id="r3", model="bluegum-only-model", prompt=99_999)
    rollups_update()  # the page reads the daily rollups the worker builds from the events

    response = owner_client.get(f"/t/{acme.slug}/usage/")
    assert response.status_code == 200
    page = response.content.decode()
    assert response.context["usage"].totals.requests == 2
    for text in ("2,000", "1,000", "mistral-large", f"wtl_{key_id}</code> IVR production",
                 'aria-current="page">Usage</a>'):
        assert text in page, text
    assert "bluegum-only-model" not in page and "99,999" not in page


def test_usage_page_refuses_a_backwards_period_with_an_error(owner_client, acme):
    response = owner_client.get(f"/t/{acme.slug}/usage/", {"since": "2026-11-10", "until": "2026-11-01"})
    assert response.status_code == 400
    assert "“From” must be on or before “To”." in response.content.decode()


def test_overview_shows_recent_requests_to_the_roles_that_see_usage(client, owner_client, acme, member_of,
                                                                    issue_key):
    key_id = keys.parse_key(issue_key(acme))[0]
    used(acme, key_id, request_id="r1", model="mistral-recent", prompt=4_321)
    page = owner_client.get(f"/t/{acme.slug}/").content.decode()
    assert "Recent requests" in page and "mistral-recent" in page and "4,321" in page

    sign_in(client, member_of(acme, Role.AGENT))
    page = client.get(f"/t/{acme.slug}/").content.decode()
    assert "Recent requests" not in page and "mistral-recent" not in page


def test_overview_says_when_there_are_no_requests_yet(owner_client, acme):
    assert "No requests yet." in owner_client.get(f"/t/{acme.slug}/").content.decode()


def test_key_page_shows_when_the_key_was_last_used(owner_client, acme, issue_key):
    key_id = keys.parse_key(issue_key(acme))[0]
    url = f"/t/{acme.slug}/keys/{key_id}/"
    assert "<dt>Last used</dt><dd>Never</dd>" in owner_client.get(url).content.decode()
    event = used(acme, key_id, request_id="r1", ago=timedelta(hours=3))
    shown = timezone.localtime(event.created_at).strftime("%d %b %Y %H:%M").lstrip("0")
    assert f"<dt>Last used</dt><dd>{shown}</dd>" in owner_client.get(url).content.decode()


def test_without_billings_functions_the_key_ceiling_is_refused_not_skipped(acme, monkeypatch):
    monkeypatch.setattr(hooks, "_tenant_limits", None)
    with pytest.raises(ImproperlyConfigured):
        api_key_create(tenant=acme, name="unchecked", limits={"rpm_limit": 10})
