"""Tenants see their limits and live remaining quota (per key too), in the console and through the management
API; owners and admins narrow a key's limits, never beyond the organisation's; the budget banner follows them on
every console page. (Who may do what, and other tenants' 404s: tests/tenants/test_isolation.py.)"""

from __future__ import annotations

from datetime import datetime
from decimal import Decimal
from types import SimpleNamespace
from zoneinfo import ZoneInfo

import pytest
from django.db import connection
from django.test.utils import CaptureQueriesContext

from audit.models import AuditEntry
from billing import services as billing_services
from billing.models import BudgetAlert, Plan
from core.quotas import windows_at as periods
from tenants import keys
from tenants.models import ApiKey, Role
from tenants.services import api_key_set_limits
from tests.conftest import published_caller, sign_in

pytestmark = pytest.mark.django_db

SYDNEY = ZoneInfo("Australia/Sydney")
NOW = datetime(2026, 11, 11, 10, 0, 5, tzinfo=SYDNEY).timestamp()


@pytest.fixture
def starter(db, django_capture_on_commit_callbacks):
    with django_capture_on_commit_callbacks(execute=True):
        return billing_services.plan_save(plan=Plan(
            slug="starter", name="Starter", is_default=True, rpm_limit=60, tpm_limit=10_000, max_concurrent=4,
            daily_token_limit=100_000, monthly_token_budget=1_000_000, monthly_spend_cap_aud=Decimal("50.00"),
        ))


@pytest.fixture
def frozen(monkeypatch):
    """The pages read the counters at NOW, the moment the limiter counted at."""
    monkeypatch.setattr("billing.quota_reads.time", SimpleNamespace(time=lambda: NOW))
    return NOW


def key_id(plaintext: str) -> str:
    return keys.parse_key(plaintext)[0]


def published_key_limits(plaintext: str) -> dict:
    return published_caller(key_id(plaintext)).key_limits


# --- the Limits page -----------------------------------------------------------------------------------
def test_limits_page_shows_what_the_limiter_counted(owner_client, acme, starter, issue_key, limiter_at, frozen):
    narrow = issue_key(acme, name="IVR", limits={"rpm_limit": 20})
    issue_key(acme, name="Chat widget")
    limiter = limiter_at(frozen)
    for _ in range(3):
        limiter.settle(limiter.admit(narrow, tokens=500), tokens=120)
    limiter.admit(narrow, tokens=1_000)  # still running: holds its reservation and a slot

    response = owner_client.get(f"/t/{acme.slug}/limits/")
    assert response.status_code == 200
    page = response.content.decode()
    report = response.context["report"]
    meters = {m.kind: m for m in report.meters}
    assert (meters["rpm"].used, meters["tpm"].used, meters["concurrent"].used) == (4, 1_360, 1)
    assert meters["tpm"].remaining == 8_640 and meters["day_tokens"].used == 1_360
    for text in ("Requests per minute", "1,360", "8,640", "1 in flight", "Plan (Starter)", "10:01:00 AEDT",
                 "12 Nov 2026 00:00 AEDT", "1 Dec 2026 00:00 AEDT", "A$50.00", 'hx-trigger="every 5s"'):
        assert text in page, text
    widget, ivr = sorted(report.keys, key=lambda k: k.api_key.name)
    assert ivr.counted and {m.kind: m.used for m in ivr.meters}["rpm"] == 4
    assert "4 of 20" in page
    assert not widget.counted  # no limits of its own: shares the organisation's


def test_limits_page_refreshes_only_its_live_part(owner_client, acme, starter, frozen):
    partial = owner_client.get(f"/t/{acme.slug}/limits/", HTTP_HX_REQUEST="true").content.decode()
    assert partial.lstrip().startswith('<div id="limits-live"') and "<html" not in partial
    assert "Requests per minute" in partial


def test_a_new_organisation_is_on_the_trial_plan_and_the_page_says_where_there_is_no_limit(owner_client, acme):
    page = owner_client.get(f"/t/{acme.slug}/limits/").content.decode()
    assert "Your plan: <strong>Trial</strong> (the default plan)" in page
    assert "No limit" in page  # the Trial plan has no daily limit


def test_limits_link_is_in_the_console_navigation_for_the_roles_that_may_see_it(client, acme, member_of):
    sign_in(client, member_of(acme, Role.BILLING))
    assert f'href="/t/{acme.slug}/limits/"' in client.get(f"/t/{acme.slug}/").content.decode()
    sign_in(client, member_of(acme, Role.AGENT))
    assert f'href="/t/{acme.slug}/limits/"' not in client.get(f"/t/{acme.slug}/").content.decode()


# --- the budget banner -----------------------------------------------------------------------------
def test_budget_banner_is_on_every_console_page(owner_client, client, acme, bluegum, starter, member_of):
    from django.utils import timezone

    period = periods(timezone.now().timestamp()).month
    BudgetAlert.objects.create(tenant=acme, budget="month_tokens", period=period, threshold=50, used=500_000,
                               limit=1_000_000)
    BudgetAlert.objects.create(tenant=acme, budget="month_tokens", period=period, threshold=80, used=800_000,
                               limit=1_000_000)
    for path in ("", "keys/", "members/", "usage/", "settings/", "limits/"):
        page = owner_client.get(f"/t/{acme.slug}/{path}").content.decode()
        assert "You have used 80% of your monthly token budget (800,000 of 1,000,000 tokens)" in page, path
        assert "it resets 1 " in page and " 00:00 AE" in page
        assert f'<a href="/t/{acme.slug}/limits/">See your limits</a>' in page
        assert "50%" not in page  # only the highest threshold reached
    with CaptureQueriesContext(connection) as queries:
        owner_client.get(f"/t/{acme.slug}/members/")
    assert sum("billing_budgetalert" in q["sql"] for q in queries.captured_queries) == 1
    sign_in(client, member_of(acme, Role.AGENT))
    agent_page = client.get(f"/t/{acme.slug}/").content.decode()
    assert "80% of your monthly token budget" in agent_page and "See your limits" not in agent_page
    # Another tenant's pages show nothing of it.
    from tests.conftest import add_totp

    add_totp(bluegum.memberships.get().user)
    sign_in(client, bluegum.memberships.get().user)
    assert "monthly token budget" not in client.get(f"/t/{bluegum.slug}/").content.decode()


def test_an_exhausted_budget_is_an_alert(owner_client, acme):
    from django.utils import timezone

    day = periods(timezone.now().timestamp()).day
    BudgetAlert.objects.create(tenant=acme, budget="day_tokens", period=day, threshold=100, used=10_000,
                               limit=10_000)
    page = owner_client.get(f"/t/{acme.slug}/").content.decode()
    assert 'role="alert">You have used 100% of your daily token budget (10,000 of 10,000 tokens) and requests are ' \
           "refused until it resets or is raised" in page


def test_old_periods_leave_no_banner(owner_client, acme):
    BudgetAlert.objects.create(tenant=acme, budget="month_tokens", period="202001", threshold=100, used=1, limit=1)
    assert "You have used" not in owner_client.get(f"/t/{acme.slug}/").content.decode()


# --- a key's limits, in the console --------------------------------------------------------------------
def test_owner_narrows_a_keys_limits_and_the_data_plane_follows(owner_client, acme, alice, starter, issue_key,
                                                                django_capture_on_commit_callbacks):
    plaintext = issue_key(acme, name="IVR")
    url = f"/t/{acme.slug}/keys/{key_id(plaintext)}/"
    page = owner_client.get(url).content.decode()
    assert "Change this key's limits" in page and "Empty: the organisation&#x27;s limit (60)" in page
    with django_capture_on_commit_callbacks(execute=True):
        response = owner_client.post(url + "limits/", {"rpm_limit": "30", "monthly_spend_cap_aud": "12.50"})
    assert response.status_code == 302 and response["Location"] == url
    api_key = ApiKey.objects.get(name="IVR")
    assert (api_key.rpm_limit, api_key.monthly_spend_cap_aud, api_key.tpm_limit) == (30, Decimal("12.50"), None)
    assert published_key_limits(plaintext) == {"rpm": 30, "month_spend": 12_500_000}
    entry = AuditEntry.objects.get(action="api_key.limits.update")
    assert entry.actor == alice and entry.tenant == acme
    assert entry.data["before"] == {"rpm_limit": None, "monthly_spend_cap_aud": None}
    assert entry.data["after"] == {"rpm_limit": 30, "monthly_spend_cap_aud": "12.50"}
    # Clearing a field returns the key to the organisation's limit.
    with django_capture_on_commit_callbacks(execute=True):
        owner_client.post(url + "limits/", {"rpm_limit": "", "monthly_spend_cap_aud": "12.50"})
    assert ApiKey.objects.get(name="IVR").rpm_limit is None
    assert published_key_limits(plaintext) == {"month_spend": 12_500_000}


def test_a_key_limit_above_the_organisations_is_refused_not_capped(owner_client, acme, starter, issue_key):
    plaintext = issue_key(acme)
    response = owner_client.post(f"/t/{acme.slug}/keys/{key_id(plaintext)}/limits/",
                                 {"rpm_limit": "61", "tpm_limit": "5000", "monthly_spend_cap_aud": "50.01"})
    assert response.status_code == 400
    errors = response.context["limits_form"].errors
    assert errors["rpm_limit"] == ["Requests per minute can't be more than your organisation's limit of 60. Lower "
                                   "it, or leave it empty to use the organisation's limit."]
    assert "A$50.00" in errors["monthly_spend_cap_aud"][0]
    assert "tpm_limit" not in errors
    api_key = ApiKey.objects.get(key_id=key_id(plaintext))
    assert (api_key.rpm_limit, api_key.tpm_limit) == (None, None)  # nothing saved
    assert not AuditEntry.objects.filter(action="api_key.limits.update").exists()


@pytest.mark.parametrize("data", [
    {"rpm_limit": "-5"}, {"rpm_limit": "0"}, {"tpm_limit": "lots"}, {"max_concurrent": "2.5"},
    {"monthly_spend_cap_aud": "ten dollars"}, {"monthly_spend_cap_aud": "1.234"}, {"daily_token_limit": "1e99"},
    {"rpm_limit": "99999999999999999999999"},
])
def test_malformed_key_limits_are_refused_with_an_error(owner_client, acme, issue_key, data):
    plaintext = issue_key(acme)
    response = owner_client.post(f"/t/{acme.slug}/keys/{key_id(plaintext)}/limits/", data)
    assert response.status_code == 400
    assert set(response.context["limits_form"].errors) == set(data)
    assert ApiKey.objects.get(key_id=key_id(plaintext)).rpm_limit is None


def test_revoked_keys_limits_stay_as_they_were(owner_client, acme, issue_key):
    from tenants.services import api_key_revoke

    plaintext = issue_key(acme)
    api_key_revoke(api_key=ApiKey.objects.get(key_id=key_id(plaintext)))
    response = owner_client.post(f"/t/{acme.slug}/keys/{key_id(plaintext)}/limits/", {"rpm_limit": "5"})
    assert response.status_code == 400
    assert "revoked" in str(response.context["limits_form"].non_field_errors())


def test_an_organisation_limit_lowered_later_does_not_block_other_changes(owner_client, acme, starter, issue_key):
    plaintext = issue_key(acme, limits={"rpm_limit": 50})
    billing_services.tenant_quota_set(tenant=acme, rpm_limit=10)
    response = owner_client.post(f"/t/{acme.slug}/keys/{key_id(plaintext)}/limits/",
                                 {"rpm_limit": "50", "tpm_limit": "100"})
    assert response.status_code == 302
    page = owner_client.get(f"/t/{acme.slug}/keys/{key_id(plaintext)}/").content.decode()
    assert "the organisation's lower limit applies" in page


def test_creating_a_key_above_the_organisations_limit_is_refused(owner_client, acme, starter):
    response = owner_client.post(f"/t/{acme.slug}/keys/new/", {"name": "big", "scopes": ["inference"],
                                                              "tpm_limit": "20000"})
    assert response.status_code == 400
    assert "organisation's limit of 10,000" in response.context["form"].errors["tpm_limit"][0]
    assert not ApiKey.objects.filter(name="big").exists()


def test_developers_see_but_do_not_edit_key_limits(client, acme, member_of, issue_key):
    sign_in(client, member_of(acme, Role.DEVELOPER))
    plaintext = issue_key(acme)
    page = client.get(f"/t/{acme.slug}/keys/{key_id(plaintext)}/").content.decode()
    assert "This key's limit" in page and "Change this key's limits" not in page
    assert client.post(f"/t/{acme.slug}/keys/{key_id(plaintext)}/limits/", {"rpm_limit": "5"}).status_code == 403


# --- the management API ----------------------------------------------------------------------------
def auth(key: str) -> dict:
    return {"HTTP_AUTHORIZATION": f"Bearer {key}"}


def test_api_limits_match_the_page_and_the_limiter(api_client, owner_client, acme, starter, issue_key,
                                                  management_key, limiter_at, frozen,
                                                  django_capture_on_commit_callbacks):
    admin_key = management_key(acme, write=False)
    ivr = issue_key(acme, name="IVR", limits={"tpm_limit": 5_000})
    with django_capture_on_commit_callbacks(execute=True):  # staff may go above the organisation's limit
        api_key_set_limits(api_key=ApiKey.objects.get(name="IVR"), limits={"monthly_spend_cap_aud": Decimal(60)},
                           within_tenant=False)
    limiter = limiter_at(frozen)
    limiter.settle(limiter.admit(ivr, tokens=300, spend=2_000_000), tokens=200, spend=1_500_000)
    limiter.admit(ivr, tokens=100, spend=10_000)

    body = api_client.get("/api/v1/limits", **auth(admin_key)).json()
    assert body["as_of"].startswith("2026-11-11T10:00:05") and body["as_of"].endswith("+11:00")
    assert body["plan"] == {"slug": "starter", "name": "Starter", "is_default": True}
    assert body["limits"]["rpm"] == {"limit": 60, "source": "plan", "used": 2, "remaining": 58,
                                     "resets_at": "2026-11-11T10:01:00+11:00"}
    assert body["limits"]["tpm"]["used"] == 300
    assert body["limits"]["concurrent"] == {"limit": 4, "source": "plan", "used": 1, "remaining": 3,
                                            "resets_at": None}
    assert body["limits"]["month_spend"] == {"limit": "50.00", "source": "plan", "used": "1.51",
                                             "remaining": "48.49", "resets_at": "2026-12-01T00:00:00+11:00"}
    by_name = {k["name"]: k for k in body["keys"]}
    assert by_name["IVR"]["counted"] is True
    assert by_name["IVR"]["limits"]["tpm"] == {"limit": 5_000, "source": "key", "used": 300, "remaining": 4_700,
                                               "resets_at": "2026-11-11T10:01:00+11:00"}
    assert by_name["IVR"]["limits"]["month_spend"]["source"] == "capped"  # A$60 asked, A$50 applies
    assert by_name["IVR"]["limits"]["rpm"]["source"] is None
    assert by_name["test key"]["counted"] is False  # the management key: no limits of its own

    page = owner_client.get(f"/t/{acme.slug}/limits/").context["report"]
    assert {m.kind: m.used for m in page.meters} == {
        "rpm": 2, "tpm": 300, "concurrent": 1, "day_tokens": 300, "month_tokens": 300,
        "month_spend": Decimal("1.51")}


def test_api_changes_a_keys_limits_within_the_organisations(api_client, acme, starter, issue_key,
                                                            management_key, django_capture_on_commit_callbacks):
    admin_key = management_key(acme)
    plaintext = issue_key(acme, name="IVR", limits={"max_concurrent": 2})
    url = f"/api/v1/keys/{key_id(plaintext)}"
    with django_capture_on_commit_callbacks(execute=True):
        response = api_client.patch(url, {"limits": {"rpm_limit": 20, "max_concurrent": None}}, format="json",
                                    **auth(admin_key))
    assert response.status_code == 200, response.content
    assert response.json()["limits"] == {"rpm_limit": 20, "tpm_limit": None, "max_concurrent": None,
                                         "daily_token_limit": None, "monthly_token_budget": None,
                                         "monthly_spend_cap_aud": None}
    assert published_key_limits(plaintext) == {"rpm": 20}
    entry = AuditEntry.objects.get(action="api_key.limits.update")
    assert entry.data["via_api_key"] == key_id(admin_key)

    error = api_client.patch(url, {"limits": {"tpm_limit": 10_001}}, format="json", **auth(admin_key)).json()
    assert error["error"]["param"] == "limits.tpm_limit" and error["error"]["code"] == "invalid"
    assert "organisation's limit of 10,000" in error["error"]["message"]
    assert ApiKey.objects.get(key_id=key_id(plaintext)).tpm_limit is None


@pytest.mark.parametrize(("body", "param"), [
    ({"limits": {"rpm_limit": -1}}, "limits.rpm_limit"),
    ({"limits": {"rpm_limit": "many"}}, "limits.rpm_limit"),
    ({"limits": {"monthly_spend_cap_aud": "1.999"}}, "limits.monthly_spend_cap_aud"),
    ({"limits": "none"}, "limits"),
    ({}, "limits"),
])
def test_api_refuses_malformed_key_limits(api_client, acme, issue_key, management_key, body, param):
    admin_key = management_key(acme)
    plaintext = issue_key(acme)
    response = api_client.patch(f"/api/v1/keys/{key_id(plaintext)}", body, format="json", **auth(admin_key))
    assert response.status_code == 400
    assert response.json()["error"]["param"] == param


def test_api_refuses_to_change_a_revoked_keys_limits(api_client, acme, issue_key, management_key):
    from tenants.services import api_key_revoke

    admin_key = management_key(acme)
    plaintext = issue_key(acme)
    api_key_revoke(api_key=ApiKey.objects.get(key_id=key_id(plaintext)))
    response = api_client.patch(f"/api/v1/keys/{key_id(plaintext)}", {"limits": {"rpm_limit": 5}}, format="json",
                                **auth(admin_key))
    assert response.status_code == 400 and "revoked" in response.json()["error"]["message"]


def test_staff_acting_as_the_tenant_see_its_limits_but_leave_keys_alone(staff_client, acme, starter, issue_key):
    plaintext = issue_key(acme)
    staff_client.post(f"/staff/tenants/{acme.slug}/act-as/", {"reason": "Ticket 42: 429s"})
    assert staff_client.get(f"/t/{acme.slug}/limits/").status_code == 200
    assert staff_client.get("/api/v1/limits").status_code == 200
    response = staff_client.post(f"/t/{acme.slug}/keys/{key_id(plaintext)}/limits/", {"rpm_limit": "5"})
    assert response.status_code == 403
    assert ApiKey.objects.get(key_id=key_id(plaintext)).rpm_limit is None
