"""A plan's own token prices: a model the plan prices itself costs the plan's price, everywhere a token becomes A$
(Stripe's metered prices, the projected bill, the rollups' cost, the request log, the data plane's spend cap); a
model it doesn't, and every tenant on another plan, costs the platform price. Staff set them on the plan's page."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta
from decimal import Decimal

import httpx
import pytest
from django.core.exceptions import ValidationError

from audit.models import AuditEntry
from billing import plan_sync, pricing, services
from billing.billing_reads import billing_overview
from billing.models import ModelPrice, Plan, PlanModelPrice, StripePrice, UsageEvent, UsageRollup
from billing.rollups import rollups_update
from core import contract
from core.redis import get_redis
from inference.gateway.backends import BackendPool
from tests.billing.billing_data import subscribe, used
from tests.conftest import add_totp, sign_in, wait_for

pytestmark = pytest.mark.django_db

SMALL = "mistralai/Mistral-7B-Instruct-v0.3"
LARGE = "mistralai/Mistral-Large-Instruct-2411"


@pytest.fixture
def priced(db):
    """The platform's prices: small A$0.20 / A$0.60 per million, large A$3 / A$9 per million."""
    ModelPrice.objects.update_or_create(model=SMALL, defaults={"input_per_1k_aud": Decimal("0.0002"),
                                                               "output_per_1k_aud": Decimal("0.0006")})
    ModelPrice.objects.update_or_create(model=LARGE, defaults={"input_per_1k_aud": Decimal("0.003"),
                                                               "output_per_1k_aud": Decimal("0.009")})


@pytest.fixture
def premium(db, priced, django_capture_on_commit_callbacks):
    """A plan that charges its own price for the small model (A$1.50 / A$4.25 per million) and the platform's for
    the large one."""
    plan = Plan.objects.create(slug="premium", name="Premium", monthly_fee_aud=Decimal("10.00"), included_tokens=0,
                               requires_payment=True, self_serve=True)
    with django_capture_on_commit_callbacks(execute=True):
        services.plan_model_price_set(plan=plan, model=SMALL, input_per_1m_aud=Decimal("1.5"),
                                      output_per_1m_aud=Decimal("4.25"))
    return plan


def published_prices() -> tuple[dict, dict]:
    return contract.decode_price_lists(get_redis().get(contract.prices_key()))


# --- the resolver ----------------------------------------------------------------------------------------------
def test_a_plans_own_price_overrides_the_platform_price_for_that_model_only(premium):
    prices = pricing.prices_for_plan(premium)
    assert prices[SMALL] == (Decimal("1.5"), Decimal("4.25"))  # micro-A$ per token = A$ per million
    assert prices[LARGE] == (Decimal("3.000000"), Decimal("9.000000"))  # the platform's
    assert pricing.price_for(premium, SMALL) == prices[SMALL]
    assert pricing.price_for(premium, "unpriced") is None
    default = Plan.objects.get(is_default=True)
    assert pricing.prices_for_plan(default)[SMALL] == (Decimal("0.2"), Decimal("0.6"))
    assert pricing.cost_micro_aud(prices[SMALL], 3, 1) == 9  # 4.5 + 4.25 = 8.75, rounded up


def test_a_plan_price_needs_a_platform_price_and_is_never_negative(premium):
    with pytest.raises(ValidationError):
        services.plan_model_price_set(plan=premium, model="not-on-the-list", input_per_1m_aud=Decimal(1),
                                      output_per_1m_aud=Decimal(1))
    with pytest.raises(ValidationError):
        services.plan_model_price_set(plan=premium, model=LARGE, input_per_1m_aud=Decimal(-1),
                                      output_per_1m_aud=Decimal(1))
    assert list(PlanModelPrice.objects.values_list("model", flat=True)) == [SMALL]


# --- published for the data plane ------------------------------------------------------------------------------
def test_the_plans_prices_are_published_as_its_price_list_and_its_tenants_name_it(premium, acme, bluegum,
                                                                                 django_capture_on_commit_callbacks):
    with django_capture_on_commit_callbacks(execute=True):
        services.tenant_quota_set(tenant=acme, plan=premium)
    default, lists = published_prices()
    name = pricing.price_list_name(premium.pk)
    assert default[SMALL] == (0.2, 0.6)
    assert lists == {name: {SMALL: (1.5, 4.25), LARGE: (3.0, 9.0)}}
    record = contract.TenantRecord.decode(get_redis().get(contract.tenant_record_key(str(acme.pk))))
    assert record.price_list == name
    other = contract.TenantRecord.decode(get_redis().get(contract.tenant_record_key(str(bluegum.pk))))
    assert other.price_list == pricing.price_list_name(Plan.objects.get(is_default=True).pk)
    assert other.price_list not in lists  # the default plan has no prices of its own: the platform's apply

    with django_capture_on_commit_callbacks(execute=True):
        assert services.plan_model_price_remove(plan=premium, model=SMALL) is True
    assert published_prices()[1] == {}
    assert services.plan_model_price_remove(plan=premium, model=SMALL) is False


def test_the_repair_job_publishes_the_price_lists_again(premium):
    get_redis().delete(contract.prices_key())  # as after a Redis restart without persistence
    from billing.tasks import publish_prices

    publish_prices()
    assert published_prices()[1][pricing.price_list_name(premium.pk)][SMALL] == (1.5, 4.25)


def test_the_gateway_prices_a_request_at_its_tenants_list_falling_back_to_the_platform():
    pool = BackendPool(redis=None, session=None)
    raw = contract.encode_prices({SMALL: (0.2, 0.6), LARGE: (3.0, 9.0)}, {"7": {SMALL: (1.5, 4.25)}})
    pool.prices, pool.price_lists = contract.decode_price_lists(raw)
    assert pool.cost_micro_aud(SMALL, 1000, 100, "7") == 1925  # 1500 + 425
    assert pool.cost_micro_aud(LARGE, 1000, 100, "7") == 3900  # not in the list: the platform's
    assert pool.cost_micro_aud(SMALL, 1000, 100, None) == 260
    assert pool.cost_micro_aud(SMALL, 1000, 100, "99") == 260  # a list not (yet) published
    assert pool.cost_micro_aud("unpriced", 1000, 100, "7") == 0


# --- Stripe ----------------------------------------------------------------------------------------------------
def test_stripe_sync_charges_the_plans_own_price_and_a_change_resyncs_that_plan(
        stripe_fake, priced, django_capture_on_commit_callbacks):
    premium = Plan.objects.create(slug="premium", name="Premium", monthly_fee_aud=Decimal("10.00"),
                                  included_tokens=0, requires_payment=True, self_serve=True)
    other = Plan.objects.create(slug="developer", name="Developer", monthly_fee_aud=Decimal("10.00"),
                                included_tokens=0, requires_payment=True, self_serve=True)
    plan_sync.plan_stripe_sync(plan=premium)
    plan_sync.plan_stripe_sync(plan=other)
    before = {(p.plan.slug, p.kind, p.model): p.stripe_price_id
              for p in StripePrice.objects.filter(active=True).select_related("plan")}

    with django_capture_on_commit_callbacks(execute=True):
        services.plan_model_price_set(plan=premium, model=SMALL, input_per_1m_aud=Decimal("1.5"),
                                      output_per_1m_aud=Decimal("0.6"))  # output as the platform's

    with stripe_fake.state.lock:
        held = {pid: dict(p) for pid, p in stripe_fake.state.prices.items()}
    new_input = StripePrice.objects.get(plan=premium, kind="input", model=SMALL, active=True)
    assert new_input.stripe_price_id != before[("premium", "input", SMALL)]
    assert Decimal(held[new_input.stripe_price_id]["unit_amount_decimal"]) == Decimal("0.00015")  # ¢ per token
    assert held[before[("premium", "input", SMALL)]]["active"] is False
    # The same amount as the platform's is the same Stripe price: nothing else changed, on either plan.
    after = {(p.plan.slug, p.kind, p.model): p.stripe_price_id
             for p in StripePrice.objects.filter(active=True).select_related("plan")}
    assert {k for k in after if after[k] != before[k]} == {("premium", "input", SMALL)}
    assert Decimal(held[after[("developer", "input", SMALL)]]["unit_amount_decimal"]) == Decimal("0.00002")
    assert not plan_sync.plan_out_of_step(Plan.objects.get(pk=premium.pk))

    with django_capture_on_commit_callbacks(execute=True):
        services.plan_model_price_remove(plan=premium, model=SMALL)
    back = StripePrice.objects.get(plan=premium, kind="input", model=SMALL, active=True)
    with stripe_fake.state.lock:
        assert Decimal(stripe_fake.state.prices[back.stripe_price_id]["unit_amount_decimal"]) == Decimal("0.00002")


# --- what the tenant is charged ----------------------------------------------------------------------------------
def test_rollups_cost_each_tenants_usage_at_its_plans_prices(premium, acme, bluegum):
    services.tenant_quota_set(tenant=acme, plan=premium)
    at = datetime(2026, 11, 3, 5, 10, tzinfo=UTC)
    used(acme, at, model=SMALL, prompt=1_000_000, completion=100_000)
    used(acme, at, model=LARGE, prompt=1_000, completion=1_000)
    used(bluegum, at, model=SMALL, prompt=1_000_000, completion=100_000)
    rollups_update()
    cost = {(r.tenant_id, r.model): r.cost_micro_aud for r in UsageRollup.objects.filter(period="h")}
    assert cost[(acme.pk, SMALL)] == 1_500_000 + 425_000  # A$1.925 at Premium's price
    assert cost[(acme.pk, LARGE)] == 3_000 + 9_000  # Premium has no price of its own: the platform's
    assert cost[(bluegum.pk, SMALL)] == 200_000 + 60_000  # the default plan: the platform's


def test_rollups_read_the_tenants_plans_once_per_batch(premium, acme, bluegum, django_assert_max_num_queries):
    services.tenant_quota_set(tenant=acme, plan=premium)
    at = datetime(2026, 11, 3, 5, 10, tzinfo=UTC)
    for _ in range(20):
        used(acme, at, model=SMALL, prompt=10)
        used(bluegum, at, model=SMALL, prompt=10)
    # A bound, not a count (PostgreSQL adds the commit-order advisory lock and the upserts' statements); what
    # matters is below: one query per table for the batch, none per event or tenant.
    with django_assert_max_num_queries(30) as captured:
        assert rollups_update() == 40
    tables = [q["sql"].split(" FROM ")[1].split()[0] for q in captured.captured_queries if " FROM " in q["sql"]]
    # The price lists and the tenant -> plan mapping: one query each for the batch, none per event or tenant.
    for table in ('"billing_tenantquota"', '"billing_planmodelprice"', '"billing_modelprice"', '"billing_plan"'):
        assert tables.count(table) == 1, (table, tables)


def test_the_projected_bill_is_at_the_plans_prices(premium, acme, bluegum):
    start = datetime(2026, 11, 3, 5, tzinfo=UTC)
    subscribe(acme, premium, start=start)
    used(acme, start + timedelta(hours=1), model=SMALL, prompt=2_000_000, completion=1_000_000)
    used(bluegum, start + timedelta(hours=1), model=SMALL, prompt=2_000_000, completion=1_000_000)
    rollups_update()
    overview = billing_overview(tenant=acme, now=start + timedelta(days=10))
    # Fee A$10 + 2M x A$1.50/M + 1M x A$4.25/M (nothing included).
    assert overview.estimate.to_date == Decimal("10") + Decimal("3") + Decimal("4.25")
    assert overview.rates[SMALL].input_per_1k * 1000 == Decimal("1.5")
    assert overview.rates[LARGE].input_per_1k * 1000 == Decimal("3")
    theirs = billing_overview(tenant=bluegum, now=start + timedelta(days=10))  # the default plan, no fee
    assert theirs.estimate.usage_to_date == Decimal("0.4") + Decimal("0.6")


def test_the_request_log_costs_requests_at_the_plans_prices(premium, acme, alice, bluegum, bob, client):
    services.tenant_quota_set(tenant=acme, plan=premium)
    for tenant in (acme, bluegum):
        UsageEvent.objects.create(request_id=uuid.uuid4().hex, tenant=tenant, key_id="k", endpoint="chat.completions",
                                  model=SMALL, status=200, prompt_tokens=1000, completion_tokens=100,
                                  created_at=datetime.now(UTC) - timedelta(minutes=1))
    add_totp(alice)
    sign_in(client, alice)
    rows = client.get(f"/t/{acme.slug}/logs/").context["rows"]
    assert [row.cost_aud for row in rows] == [Decimal("0.001925")]
    add_totp(bob)
    sign_in(client, bob)
    rows = client.get(f"/t/{bluegum.slug}/logs/").context["rows"]
    assert [row.cost_aud for row in rows] == [Decimal("0.00026")]


# --- the spend cap, on the data plane ----------------------------------------------------------------------------
def _post(server, key: str) -> httpx.Response:
    return httpx.post(f"{server.base_url}/v1/chat/completions", headers={"Authorization": f"Bearer {key}"},
                      json={"model": SMALL, "messages": [{"role": "user", "content": "Hi"}], "max_tokens": 5},
                      timeout=30)


@pytest.mark.django_db(transaction=True)
def test_a_tenant_on_a_dearer_plan_reaches_its_spend_cap_sooner(gateway_ready, acme, bluegum, issue_key,
                                                                django_capture_on_commit_callbacks):
    from inference.gateway.app import gateway

    with django_capture_on_commit_callbacks(execute=True):
        # The platform: A$0.001 per million tokens; Dear's own: A$1,000 per million (A$0.001 a token).
        services.model_price_set(model=SMALL, input_per_1k_aud=Decimal("0.000001"),
                                 output_per_1k_aud=Decimal("0.000001"))
        dear = services.plan_save(plan=Plan(slug="dear", name="Dear", rpm_limit=100))
        services.plan_model_price_set(plan=dear, model=SMALL, input_per_1m_aud=Decimal("1000"),
                                      output_per_1m_aud=Decimal("1000"))
        services.tenant_quota_set(tenant=acme, plan=dear, monthly_spend_cap_aud=Decimal("0.05"))
        services.tenant_quota_set(tenant=bluegum, monthly_spend_cap_aud=Decimal("0.05"))  # on the default plan
    name = pricing.price_list_name(dear.pk)
    wait_for(lambda: gateway.pool.price_lists.get(name, {}).get(SMALL) == (1000.0, 1000.0), timeout=10)
    dear_key, default_key = issue_key(acme), issue_key(bluegum)

    statuses = [_post(gateway_ready, dear_key).status_code for _ in range(6)]
    assert statuses[0] == 200 and 429 in statuses  # ~15 tokens a request: A$0.05 lasts a few requests
    error = _post(gateway_ready, dear_key).json()["error"]
    assert error["code"] == "insufficient_quota" and "monthly spend cap (A$0.05)" in error["message"]
    assert [_post(gateway_ready, default_key).status_code for _ in range(6)] == [200] * 6


# --- staff ---------------------------------------------------------------------------------------------------
def test_staff_set_and_remove_a_plans_price_on_its_page(staff_client, staff, priced,
                                                        django_capture_on_commit_callbacks):
    plan = Plan.objects.create(slug="premium", name="Premium")
    page = staff_client.get(f"/staff/plans/{plan.slug}/")
    assert page.status_code == 200
    assert "A$0.20" in page.content.decode() and "A$3.00" in page.content.decode()  # the platform's, per million
    with django_capture_on_commit_callbacks(execute=True):
        response = staff_client.post(f"/staff/plans/{plan.slug}/prices/", {
            "model": SMALL, "input_per_1m_aud": "0.0125", "output_per_1m_aud": "4.5"})
    assert response.status_code == 302 and response["Location"].endswith(f"/staff/plans/{plan.slug}/#prices")
    price = PlanModelPrice.objects.get(plan=plan, model=SMALL)
    assert (price.input_per_1m_aud, price.output_per_1m_aud) == (Decimal("0.0125"), Decimal("4.5"))
    entry = AuditEntry.objects.filter(action="plan.price.update").latest("id")
    assert entry.actor == staff and entry.data == {
        "slug": "premium", "model": SMALL, "before": None,
        "after": {"input_per_1m_aud": "0.0125", "output_per_1m_aud": "4.5000"}}
    assert published_prices()[1][pricing.price_list_name(plan.pk)][SMALL] == (0.0125, 4.5)
    body = staff_client.get(f"/staff/plans/{plan.slug}/").content.decode()
    assert "A$0.0125" in body and "A$4.50" in body  # sub-cent prices to four decimals
    assert "own prices: 1 model" in staff_client.get("/staff/plans/").content.decode()

    with django_capture_on_commit_callbacks(execute=True):
        response = staff_client.post(f"/staff/plans/{plan.slug}/prices/remove/", {"model": SMALL})
    assert response.status_code == 302 and not PlanModelPrice.objects.filter(plan=plan).exists()
    entry = AuditEntry.objects.filter(action="plan.price.remove").latest("id")
    assert entry.actor == staff and entry.data["before"]["input_per_1m_aud"] == "0.0125"
    assert published_prices()[1] == {}


@pytest.mark.parametrize("data", [
    {"model": SMALL, "input_per_1m_aud": "cheap", "output_per_1m_aud": "1"},
    {"model": SMALL, "input_per_1m_aud": "-1", "output_per_1m_aud": "1"},
    {"model": SMALL, "input_per_1m_aud": "0.00001", "output_per_1m_aud": "1"},  # five decimals
    {"model": "not-on-the-list", "input_per_1m_aud": "1", "output_per_1m_aud": "1"},
    {"model": SMALL},
])
def test_a_malformed_plan_price_is_refused_with_a_form_error(staff_client, priced, data):
    plan = Plan.objects.create(slug="premium", name="Premium")
    response = staff_client.post(f"/staff/plans/{plan.slug}/prices/", data)
    assert response.status_code == 400
    assert response.context["price_form"].errors
    assert 'role="alert"' in response.content.decode() or "field-error" in response.content.decode()
    assert not PlanModelPrice.objects.exists()
    assert not AuditEntry.objects.filter(action="plan.price.update").exists()


def test_plan_prices_are_for_staff_only(client, alice, acme, priced):
    plan = Plan.objects.create(slug="premium", name="Premium")
    urls = [f"/staff/plans/{plan.slug}/prices/", f"/staff/plans/{plan.slug}/prices/remove/"]
    data = {"model": SMALL, "input_per_1m_aud": "1", "output_per_1m_aud": "1"}
    for url in urls:
        response = client.post(url, data)
        assert response.status_code == 302 and response["Location"].startswith("/accounts/login/"), url
    add_totp(alice)
    sign_in(client, alice)  # an owner, not staff
    for url in urls:
        assert client.post(url, data).status_code == 404, url
    assert not PlanModelPrice.objects.exists()


def test_an_unknown_plan_is_a_404(staff_client, priced):
    response = staff_client.post("/staff/plans/nope/prices/", {"model": SMALL, "input_per_1m_aud": "1",
                                                                "output_per_1m_aud": "1"})
    assert response.status_code == 404
