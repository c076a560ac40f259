"""Plans in Stripe: a plan's product, fee and metered prices (one per model and direction, included tokens free as
a first graduated tier) are synced idempotently; a changed amount is a new price and the old one archived; a sync
that failed halfway completes on the next run without duplicates; staff sync from the plans page."""

from __future__ import annotations

from decimal import Decimal

import pytest

from audit.models import AuditEntry
from billing import plan_sync
from billing.models import ModelPrice, Plan, StripeMeter, StripePrice
from billing.services import model_price_set, plan_save

SMALL = "mistralai/Mistral-7B-Instruct-v0.3"
LARGE = "mistralai/Mistral-Large-Instruct-2411"


@pytest.fixture
def priced(db):
    ModelPrice.objects.update_or_create(model=SMALL, defaults={"input_per_1k_aud": Decimal("0.0002"),
                                                               "output_per_1k_aud": Decimal("0.0006")})
    ModelPrice.objects.update_or_create(model=LARGE, defaults={"input_per_1k_aud": Decimal("0.003"),
                                                               "output_per_1k_aud": Decimal("0.009")})


def make_plan(**fields) -> Plan:
    values = {"slug": "developer", "name": "Developer", "monthly_fee_aud": Decimal("49.00"),
              "included_tokens": 1_000_000, "requires_payment": True, "self_serve": True, "trial_days": 14,
              "trial_card_required": False, **fields}
    return Plan.objects.create(**values)


def stripe_prices(fake) -> dict:
    with fake.state.lock:
        return {pid: dict(p) for pid, p in fake.state.prices.items()}


def test_sync_creates_product_fee_and_a_metered_price_per_model_and_direction(stripe_fake, priced):
    plan = make_plan()
    result = plan_sync.plan_stripe_sync(plan=plan)
    plan.refresh_from_db()
    assert plan.stripe_product_id == result.product_id and plan.synced_at is not None
    rows = {(p.kind, p.model): p for p in StripePrice.objects.filter(plan=plan, active=True)}
    assert set(rows) == {("fee", ""), ("input", SMALL), ("output", SMALL), ("input", LARGE), ("output", LARGE)}
    assert StripeMeter.objects.count() == 4
    held = stripe_prices(stripe_fake)
    fee = held[rows[("fee", "")].stripe_price_id]
    assert (fee["unit_amount"], fee["currency"], fee["tax_behavior"]) == (4900, "aud", "exclusive")
    assert fee["recurring"]["interval"] == "month"
    large_out = held[rows[("output", LARGE)].stripe_price_id]
    # A$0.009 per 1k tokens = 0.0009 cents a token, after the million included tokens.
    assert large_out["billing_scheme"] == "tiered" and large_out["tiers_mode"] == "graduated"
    meter = StripeMeter.objects.get(model=LARGE, direction="output")
    assert large_out["recurring"]["meter"] == meter.stripe_meter_id
    assert rows[("output", LARGE)].meter == meter.event_name
    assert plan_sync.per_token_cents(Decimal("0.009")) == Decimal("0.0009")
    entry = AuditEntry.objects.filter(action="plan.stripe_sync").latest("id")
    assert entry.data["product"] == plan.stripe_product_id and len(entry.data["created"]) == 5


def test_a_second_sync_changes_nothing_and_calls_no_price_endpoint(stripe_fake, priced):
    plan = make_plan()
    plan_sync.plan_stripe_sync(plan=plan)
    before = len(stripe_fake.requests)
    result = plan_sync.plan_stripe_sync(plan=plan)
    assert not result.changed
    assert StripePrice.objects.filter(plan=plan).count() == 5
    later = stripe_fake.requests[before:]
    assert not [r for r in later if r["path"].startswith("/v1/prices") or "meters" in r["path"]]
    assert not plan_sync.plan_out_of_step(Plan.objects.get(pk=plan.pk))


def test_a_changed_fee_is_a_new_price_and_the_old_one_is_archived(stripe_fake, priced):
    plan = make_plan()
    plan_sync.plan_stripe_sync(plan=plan)
    old = StripePrice.objects.get(plan=plan, kind="fee", active=True)
    plan.monthly_fee_aud = Decimal("59.00")
    plan.save()
    assert plan_sync.plan_out_of_step(plan)
    plan_sync.plan_stripe_sync(plan=plan)
    new = StripePrice.objects.get(plan=plan, kind="fee", active=True)
    assert new.stripe_price_id != old.stripe_price_id
    old.refresh_from_db()
    assert old.active is False  # kept: subscriptions on it still resolve to the plan
    held = stripe_prices(stripe_fake)
    assert held[old.stripe_price_id]["active"] is False and held[new.stripe_price_id]["unit_amount"] == 5900
    # The metered prices didn't change, so they were left alone.
    assert StripePrice.objects.filter(plan=plan, active=False).count() == 1


def test_a_model_price_change_resyncs_plans_in_stripe_after_commit(stripe_fake, priced,
                                                                   django_capture_on_commit_callbacks):
    plan = make_plan()
    plan_sync.plan_stripe_sync(plan=plan)
    old = StripePrice.objects.get(plan=plan, kind="input", model=SMALL, active=True)
    with django_capture_on_commit_callbacks(execute=True):
        model_price_set(model=SMALL, input_per_1k_aud=Decimal("0.0004"), output_per_1k_aud=Decimal("0.0006"))
    new = StripePrice.objects.get(plan=plan, kind="input", model=SMALL, active=True)
    assert new.stripe_price_id != old.stripe_price_id
    assert new.amount.startswith("0.00004 aud/token")


def test_a_sync_that_failed_halfway_completes_without_duplicates(stripe_fake, priced):
    plan = make_plan()
    stripe_fake.fail_next("/v1/prices", count=3, status=500)  # the SDK retries twice: the third attempt fails too
    with pytest.raises(plan_sync.stripe_gateway.StripeUnavailable):
        plan_sync.plan_stripe_sync(plan=plan)
    assert plan_sync.plan_sync_failure(plan)["message"] == "Stripe could not be reached."
    assert plan_sync.plans_sync_due() == 1  # what the periodic job does
    assert plan_sync.plan_sync_failure(plan) is None
    assert StripePrice.objects.filter(plan=plan, active=True).count() == 5
    fee_prices = [p for p in stripe_prices(stripe_fake).values() if p["product"] == Plan.objects.get(
        pk=plan.pk).stripe_product_id and p["active"]]
    assert len(fee_prices) == 5  # nothing created twice in Stripe either


def test_a_price_stripe_created_but_we_did_not_record_is_adopted(stripe_fake, priced):
    plan = make_plan()
    plan_sync.plan_stripe_sync(plan=plan)
    fee = StripePrice.objects.get(plan=plan, kind="fee")
    fee.delete()  # as if the sync had died between Stripe's answer and our write
    result = plan_sync.plan_stripe_sync(plan=plan)
    assert result.created == [fee.stripe_price_id]
    assert StripePrice.objects.get(plan=plan, kind="fee", active=True).stripe_price_id == fee.stripe_price_id


def test_without_stripe_a_sync_says_payments_are_not_configured(settings, priced):
    settings.STRIPE_SECRET_KEY = ""
    with pytest.raises(plan_sync.PaymentsNotConfigured):
        plan_sync.plan_stripe_sync(plan=make_plan())
    assert plan_sync.plans_sync_due() == 0


def test_plan_save_of_a_paid_plan_syncs_it(stripe_fake, priced, django_capture_on_commit_callbacks):
    plan = Plan(slug="business", name="Business", monthly_fee_aud=Decimal("499"), included_tokens=0,
                requires_payment=True, self_serve=True)
    with django_capture_on_commit_callbacks(execute=True):
        plan_save(plan=plan)
    plan.refresh_from_db()
    assert plan.stripe_product_id
    metered = StripePrice.objects.get(plan=plan, kind="output", model=LARGE)
    assert stripe_prices(stripe_fake)[metered.stripe_price_id]["billing_scheme"] == "per_unit"


# --- staff pages ------------------------------------------------------------------------------------------------
def test_staff_sync_button_syncs_and_reports(staff_client, stripe_fake, priced):
    plan = make_plan()
    response = staff_client.post(f"/staff/plans/{plan.slug}/sync/")
    assert response.status_code == 302
    plan.refresh_from_db()
    assert plan.stripe_product_id
    page = staff_client.get("/staff/plans/").content.decode()
    assert "In step with Stripe" in page


def test_staff_sync_failure_is_shown(staff_client, stripe_fake, priced):
    plan = make_plan()
    stripe_fake.fail_next("/v1/products", count=3, status=500)
    response = staff_client.post(f"/staff/plans/{plan.slug}/sync/", follow=True)
    assert response.status_code == 200
    assert "Stripe could not be reached" in response.content.decode()
    assert AuditEntry.objects.filter(action="plan.stripe_sync.failed", actor_label="ops@wattle.example").exists()


def test_sync_is_staff_only(client, alice, owner_client, priced):
    plan = make_plan()
    assert owner_client.post(f"/staff/plans/{plan.slug}/sync/").status_code == 404
    assert client.post(f"/staff/plans/{plan.slug}/sync/").status_code == 302  # to sign in


def test_plan_form_sets_the_payment_fields(staff_client, db):
    response = staff_client.post("/staff/plans/", {
        "name": "Developer", "slug": "developer", "monthly_fee_aud": "49.00", "included_tokens": "1000000",
        "trial_days": "14", "self_serve": "on", "requires_payment": "on",
    })
    assert response.status_code == 302, response.content.decode()[:2000]
    plan = Plan.objects.get(slug="developer")
    assert (plan.monthly_fee_aud, plan.included_tokens, plan.trial_days) == (Decimal("49.00"), 1_000_000, 14)
    assert plan.self_serve and plan.requires_payment and not plan.trial_card_required
