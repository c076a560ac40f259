"""Staff console for quotas: a tenant's plan and overrides, key overrides, who is near or over a limit, plans and
model prices, and the cost guard's banner with its one-click lift."""

from __future__ import annotations

import uuid
from datetime import datetime, timedelta
from decimal import Decimal
from types import SimpleNamespace
from zoneinfo import ZoneInfo

import pytest
from django.test import Client
from django.utils import timezone

from audit.models import AuditEntry
from billing import limits, services
from billing.cost_guard import cost_guard_check
from billing.models import CostGuardAction, ModelPrice, Plan, TenantQuota, UsageEvent
from core import contract
from core.redis import get_redis
from inference.gateway.errors import GatewayError
from tenants import keys
from tenants.models import ApiKey, Tenant
from tests.conftest import add_passkey, add_totp, make_user, published_caller, sign_in

pytestmark = pytest.mark.django_db

SYDNEY = ZoneInfo("Australia/Sydney")
NOW = datetime(2026, 11, 11, 10, 0, 5, tzinfo=SYDNEY).timestamp()
MODEL = "mistralai/Mistral-Large-Instruct-2411"
STAFF_PAGES = ["/staff/", "/staff/tenants/{slug}/", "/staff/limits/", "/staff/plans/", "/staff/plans/starter/",
               "/staff/backends/", "/staff/tenants/{slug}/keys/{key}/limits/"]


@pytest.fixture
def starter(db, django_capture_on_commit_callbacks):
    with django_capture_on_commit_callbacks(execute=True):
        return services.plan_save(plan=Plan(slug="starter", name="Starter", is_default=True, rpm_limit=60,
                                            tpm_limit=10_000, monthly_token_budget=1_000_000))


def published(plaintext: str) -> dict:
    """The limits the data plane reads for a key: its tenant's record's and the key record's own."""
    caller = published_caller(keys.parse_key(plaintext)[0])
    return {"tenant": caller.tenant_limits, "key": caller.key_limits}


def pages(tenant, key_id: str) -> list[str]:
    return [p.format(slug=tenant.slug, key=key_id) for p in STAFF_PAGES]


# --- who may open them -----------------------------------------------------------------------------
def test_staff_pages_are_for_staff_who_used_their_passkey(client, acme, alice, starter, issue_key):
    key_id = keys.parse_key(issue_key(acme))[0]
    for url in pages(acme, key_id):
        response = client.get(url)
        assert response.status_code == 302 and response["Location"].startswith("/accounts/login/"), url
    add_totp(alice)
    sign_in(client, alice)  # an owner, not staff
    for url in pages(acme, key_id):
        assert client.get(url).status_code == 404, url
    for url, data in [(f"/staff/tenants/{acme.slug}/limits/", {"rpm_limit": "1"}),
                      (f"/staff/tenants/{acme.slug}/cost-guard/lift/", {}), ("/staff/plans/", {"name": "x"}),
                      ("/staff/prices/", {"model": "m"})]:
        assert client.post(url, data).status_code == 404, url
    assert TenantQuota.objects.filter(tenant=acme).first() is None
    staff_without_passkey = make_user("new-ops@wattle.example", staff=True)
    add_passkey(staff_without_passkey)
    sign_in(client, staff_without_passkey)  # has a passkey, did not use it in this session
    response = client.get("/staff/plans/")
    assert response.status_code == 302 and "webauthn" in response["Location"]


def test_staff_navigation_links_every_staff_page(staff_client, acme, starter, issue_key):
    key_id = keys.parse_key(issue_key(acme))[0]
    for url in pages(acme, key_id):
        response = staff_client.get(url)
        assert response.status_code == 200, url
        nav = response.content.decode()
        for link in ('href="/staff/"', 'href="/staff/limits/"', 'href="/staff/plans/"', 'href="/staff/backends/"'):
            assert link in nav, (url, link)


# --- a tenant's plan and overrides -----------------------------------------------------------------
def test_tenant_detail_shows_the_real_plan_and_effective_limits(staff_client, acme, starter):
    page = staff_client.get(f"/staff/tenants/{acme.slug}/").content.decode()
    assert "Pay as you go" not in page
    assert 'href="/staff/plans/starter/">Starter</a> (the default plan)' in page
    assert "Empty: the Starter plan&#x27;s limit (60)" in page
    assert "The default plan (now Starter)" in page


def test_staff_set_a_tenants_plan_and_overrides(staff_client, staff, acme, starter, issue_key,
                                               django_capture_on_commit_callbacks):
    plaintext = issue_key(acme)
    big = services.plan_save(plan=Plan(slug="big", name="Big", rpm_limit=1_000, tpm_limit=400_000))
    with django_capture_on_commit_callbacks(execute=True):
        response = staff_client.post(f"/staff/tenants/{acme.slug}/limits/",
                                     {"plan": "big", "rpm_limit": "200", "monthly_spend_cap_aud": "99.50"})
    assert response.status_code == 302
    quota = TenantQuota.objects.get(tenant=acme)
    assert (quota.plan, quota.rpm_limit, quota.tpm_limit, quota.updated_by) == (big, 200, None, staff)
    assert limits.tenant_limits(acme)["tpm_limit"] == 400_000  # from the plan
    assert published(plaintext)["tenant"] == {"rpm": 200, "tpm": 400_000, "month_spend": 99_500_000}
    entry = AuditEntry.objects.get(action="tenant.limits.update")
    assert entry.actor == staff and entry.data["after"]["plan"] == "big"
    page = staff_client.get(f"/staff/tenants/{acme.slug}/").content.decode()
    assert "Set for this organisation" in page and "Plan (Big)" in page
    # Back to the default plan, every override cleared.
    with django_capture_on_commit_callbacks(execute=True):
        staff_client.post(f"/staff/tenants/{acme.slug}/limits/", {"plan": ""})
    assert limits.tenant_limits(acme)["rpm_limit"] == 60
    assert published(plaintext)["tenant"] == {"rpm": 60, "tpm": 10_000, "month_tokens": 1_000_000}


@pytest.mark.parametrize("data", [
    {"plan": "no-such-plan"}, {"plan": "<script>"}, {"rpm_limit": "-1"}, {"tpm_limit": "fast"},
    {"monthly_spend_cap_aud": "1,000"}, {"max_concurrent": "0"}, {"daily_token_limit": "9" * 30},
])
def test_malformed_tenant_limits_are_refused(staff_client, acme, starter, data):
    response = staff_client.post(f"/staff/tenants/{acme.slug}/limits/", data)
    assert response.status_code == 400
    assert set(response.context["quota_form"].errors) == set(data)
    assert not TenantQuota.objects.filter(tenant=acme).exists()
    assert staff_client.post("/staff/tenants/no-such-tenant/limits/", {}).status_code == 404


def test_staff_may_set_a_key_above_its_organisation_and_the_data_plane_caps_it(
        staff_client, staff, acme, starter, issue_key, django_capture_on_commit_callbacks, limiter_at):
    plaintext = issue_key(acme, name="IVR")
    key_id = keys.parse_key(plaintext)[0]
    url = f"/staff/tenants/{acme.slug}/keys/{key_id}/limits/"
    page = staff_client.get(url).content.decode()
    assert "the data plane still applies the organisation's limit where it is lower" in page
    with django_capture_on_commit_callbacks(execute=True):
        response = staff_client.post(url, {"rpm_limit": "500", "max_concurrent": "3"})
    assert response.status_code == 302
    assert ApiKey.objects.get(key_id=key_id).rpm_limit == 500
    limits = published(plaintext)
    assert limits["key"] == {"rpm": 500, "concurrent": 3} and limits["tenant"]["rpm"] == 60  # both are checked
    limiter = limiter_at(1_800_000_005.0)
    for _ in range(60):
        limiter.settle(limiter.admit(plaintext, tokens=1), tokens=1)
    with pytest.raises(GatewayError, match="limit 60"):  # the organisation's 60, not the key's 500
        limiter.admit(plaintext, tokens=1)
    assert AuditEntry.objects.get(action="api_key.limits.update").actor == staff
    assert "(capped)" in staff_client.get(url).content.decode()
    assert staff_client.post(url, {"rpm_limit": "many"}).status_code == 400
    detail = staff_client.get(f"/staff/tenants/{acme.slug}/").content.decode()
    assert f'href="{url}"' in detail and "Staff may set any value" in detail


def test_a_key_of_another_tenant_is_404_under_this_tenant(staff_client, acme, bluegum, issue_key):
    other = keys.parse_key(issue_key(bluegum))[0]
    assert staff_client.get(f"/staff/tenants/{acme.slug}/keys/{other}/limits/").status_code == 404


# --- near or over a limit --------------------------------------------------------------------------
def test_near_limits_page_lists_the_closest_first(staff_client, acme, bluegum, starter, issue_key, limiter_at,
                                                 monkeypatch):
    monkeypatch.setattr("billing.quota_reads.time", SimpleNamespace(time=lambda: NOW))
    acme_key, bluegum_key = issue_key(acme), issue_key(bluegum)
    limiter = limiter_at(NOW)
    for _ in range(54):  # 90% of 60 requests per minute
        limiter.settle(limiter.admit(acme_key, tokens=1), tokens=1)
    limiter.settle(limiter.admit(bluegum_key, tokens=9_900), tokens=9_900)  # 99% of 10,000 tokens a minute
    page = staff_client.get("/staff/limits/").content.decode()
    assert page.index("Bluegum Calls") < page.index("Acme Contact")
    assert "<strong>99%</strong> of tokens per minute: 9,900 of 10,000" in page
    assert "<strong>90%</strong> of requests per minute: 54 of 60" in page
    assert "resets 10:01:00 AEDT" in page


def test_near_limits_page_says_when_nobody_is(staff_client, acme, starter):
    assert "No tenant is at 80% of any limit right now." in staff_client.get("/staff/limits/").content.decode()


# --- plans and prices ------------------------------------------------------------------------------
def test_staff_create_and_edit_plans_and_choose_the_default(staff_client, staff, acme, starter, issue_key,
                                                           django_capture_on_commit_callbacks):
    plaintext = issue_key(acme)
    with django_capture_on_commit_callbacks(execute=True):
        response = staff_client.post("/staff/plans/", {"name": "Business", "slug": "business", "rpm_limit": "600",
                                                       "tpm_limit": "400000", "is_default": "on"})
    assert response.status_code == 302
    business = Plan.objects.get(slug="business")
    assert business.is_default and not Plan.objects.get(slug="starter").is_default
    assert published(plaintext)["tenant"] == {"rpm": 600, "tpm": 400_000}  # acme follows the default plan
    assert AuditEntry.objects.filter(action="plan.create", actor=staff).exists()
    page = staff_client.get("/staff/plans/").content.decode()
    assert "Business" in page and "badge-active\">default" in page
    with django_capture_on_commit_callbacks(execute=True):
        response = staff_client.post("/staff/plans/business/", {"name": "Business+", "slug": "ignored",
                                                                "rpm_limit": "900", "is_default": "on"})
    assert response.status_code == 302
    business.refresh_from_db()
    assert (business.name, business.slug, business.rpm_limit, business.tpm_limit) == ("Business+", "business", 900,
                                                                                       None)
    assert published(plaintext)["tenant"] == {"rpm": 900}
    assert staff_client.get("/staff/plans/nope/").status_code == 404


@pytest.mark.parametrize("data", [
    {"name": "Dup", "slug": "starter"}, {"name": "", "slug": "x"}, {"name": "   ", "slug": "x"},
    {"name": "Bad slug", "slug": "has space"}, {"name": "Neg", "slug": "neg", "rpm_limit": "-4"},
    {"name": "Text", "slug": "text", "tpm_limit": "lots"},
])
def test_malformed_plans_are_refused(staff_client, starter, data):
    before = set(Plan.objects.values_list("slug", flat=True))
    response = staff_client.post("/staff/plans/", data)
    assert response.status_code == 400
    assert response.context["plan_form"].errors
    assert set(Plan.objects.values_list("slug", flat=True)) == before


def test_staff_set_model_prices(staff_client, staff, django_capture_on_commit_callbacks):
    from inference.models import Backend

    Backend.objects.create(name="syd-1", base_url="http://10.0.0.5:8000", served_models=[MODEL])
    with django_capture_on_commit_callbacks(execute=True):
        response = staff_client.post("/staff/prices/", {"model": MODEL, "input_per_1m_aud": "4",
                                                        "output_per_1m_aud": "12"})
    assert response.status_code == 302
    price = ModelPrice.objects.get(model=MODEL)
    assert (price.input_per_1k_aud, price.output_per_1k_aud) == (Decimal("0.004"), Decimal("0.012"))
    assert contract.decode_prices(get_redis().get(contract.prices_key()))[MODEL] == (4.0, 12.0)  # micro-AUD/token
    assert AuditEntry.objects.filter(action="price.update", actor=staff).exists()
    form = staff_client.get(f"/staff/plans/?model={MODEL}").context["price_form"]
    assert form.initial["model"] == MODEL
    assert (form.initial["input_per_1m_aud"], form.initial["output_per_1m_aud"]) == (4, 12)  # per 1M, as shown
    for bad in ({"model": "has space", "input_per_1m_aud": "1", "output_per_1m_aud": "1"},
                {"model": MODEL, "input_per_1m_aud": "0.0001", "output_per_1m_aud": "1"},  # finer than stored
                {"model": MODEL, "input_per_1m_aud": "-1", "output_per_1m_aud": "1"},
                {"model": MODEL, "input_per_1m_aud": "cheap", "output_per_1m_aud": "1"},
                {"model": MODEL}):
        assert staff_client.post("/staff/prices/", bad).status_code == 400
    assert ModelPrice.objects.get(model=MODEL).input_per_1k_aud == Decimal("0.004")


# --- the cost guard's banner -----------------------------------------------------------------------
@pytest.fixture
def guarded(settings, acme, starter, django_capture_on_commit_callbacks):
    """Acme's spend spiked and the cost guard throttled it."""
    settings.BILLING_COST_GUARD_MIN_HOURLY_AUD = 5.0
    settings.BILLING_COST_GUARD_SPIKE_FACTOR = 4.0
    settings.BILLING_COST_GUARD_PLATFORM_DAILY_AUD = 1_000_000.0
    services.model_price_set(model=MODEL, input_per_1k_aud=Decimal("1.00"), output_per_1k_aud=Decimal("1.00"))
    UsageEvent.objects.create(
        request_id=f"req_{uuid.uuid4().hex[:20]}", tenant=acme, endpoint="chat.completions", model=MODEL, status=200,
        prompt_tokens=15_000, completion_tokens=15_000, created_at=timezone.now() - timedelta(minutes=5),
    )
    with django_capture_on_commit_callbacks(execute=True):
        action = cost_guard_check()
    assert action is not None and action.tenant == acme
    return action


def test_cost_guard_banner_is_on_every_staff_page_with_a_lift_button(staff_client, acme, guarded, issue_key):
    key_id = keys.parse_key(issue_key(acme))[0]
    for url in pages(acme, key_id):
        page = staff_client.get(url).content.decode()
        assert "Cost guard:" in page and "Acme Contact spent A$30.00 in the last hour" in page, url
        assert f'action="/staff/tenants/{acme.slug}/cost-guard/lift/"' in page, url
        assert "Lift for Acme Contact" in page
    add_totp(acme.memberships.get().user)
    owner = sign_in(Client(), acme.memberships.get().user)
    assert "Cost guard:" not in owner.get(f"/t/{acme.slug}/").content.decode()  # staff pages only


def test_one_click_lift_restores_the_tenant(staff_client, staff, acme, guarded, issue_key,
                                           django_capture_on_commit_callbacks):
    plaintext = issue_key(acme)
    assert published(plaintext)["tenant"]["rpm"] == 10  # throttled
    with django_capture_on_commit_callbacks(execute=True):
        response = staff_client.post(f"/staff/tenants/{acme.slug}/cost-guard/lift/", {"next": "/staff/limits/"})
    assert response.status_code == 302 and response["Location"] == "/staff/limits/"
    guarded.refresh_from_db()
    assert guarded.lifted_by == staff and guarded.lifted_at is not None
    assert published(plaintext)["tenant"]["rpm"] == 60
    assert AuditEntry.objects.filter(action="cost_guard.lift", actor=staff, tenant=acme).exists()
    page = staff_client.get("/staff/").content.decode()
    assert "Cost guard:" not in page
    # Lifting again is harmless.
    again = staff_client.post(f"/staff/tenants/{acme.slug}/cost-guard/lift/", {"next": "//evil.example/"})
    assert again.status_code == 302 and again["Location"] == f"/staff/tenants/{acme.slug}/"


def test_lift_needs_csrf_and_post(staff, acme, guarded):
    client = sign_in(Client(enforce_csrf_checks=True), staff, passkey_used=True)
    assert client.post(f"/staff/tenants/{acme.slug}/cost-guard/lift/").status_code == 403
    assert client.get(f"/staff/tenants/{acme.slug}/cost-guard/lift/").status_code == 405
    assert CostGuardAction.objects.get().lifted_at is None
    assert Tenant.objects.get(pk=acme.pk).status == Tenant.Status.ACTIVE


def test_staff_pages_read_the_cost_guard_once(staff_client, acme, guarded):
    from django.db import connection
    from django.test.utils import CaptureQueriesContext

    with CaptureQueriesContext(connection) as queries:
        staff_client.get("/staff/plans/")
    assert sum("billing_costguardaction" in q["sql"] for q in queries.captured_queries) == 1
