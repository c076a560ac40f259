"""The cost guard: finds the top spender on a spike, throttles or suspends it, tells staff, and lifts."""

from __future__ import annotations

import uuid
from datetime import timedelta
from decimal import Decimal

import pytest
from django.core import mail
from django.utils import timezone

from audit.models import AuditEntry
from billing import limits, services
from billing.cost_guard import active_actions, cost_guard_check, cost_guard_lift, spend_report
from billing.models import CostGuardAction, Plan, UsageEvent
from tenants.models import Tenant

MODEL = "mistralai/Mistral-Large-Instruct-2411"


def spend(tenant, *, tokens: int, ago: timedelta) -> None:
    UsageEvent.objects.create(
        request_id=f"req_{uuid.uuid4().hex[:20]}", tenant=tenant, endpoint="chat.completions", model=MODEL,
        status=200, prompt_tokens=tokens // 2, completion_tokens=tokens // 2, created_at=timezone.now() - ago,
    )


@pytest.fixture
def priced(db, settings):
    settings.BILLING_COST_GUARD_MIN_HOURLY_AUD = 5.0
    settings.BILLING_COST_GUARD_SPIKE_FACTOR = 4.0
    settings.BILLING_COST_GUARD_PLATFORM_DAILY_AUD = 1_000_000.0
    settings.STAFF_ALERT_EMAILS = ["ops@wattle.example"]
    services.plan_save(plan=Plan(slug="std", name="Standard", rpm_limit=600, tpm_limit=400_000, is_default=True))
    services.model_price_set(model=MODEL, input_per_1k_aud=Decimal("1.00"), output_per_1k_aud=Decimal("1.00"))


def steady_week(tenant, tokens_per_day: int) -> None:
    for day in range(1, 8):
        spend(tenant, tokens=tokens_per_day, ago=timedelta(days=day))


def test_spend_report_prices_usage_against_a_baseline(priced, acme):
    steady_week(acme, 24_000)  # A$24 a day: A$1 an hour
    spend(acme, tokens=3_000, ago=timedelta(minutes=10))  # A$3 in the last hour
    [row] = spend_report()
    assert row.last_hour == Decimal("3") and row.baseline_hour == Decimal("1")


def test_a_spike_throttles_the_top_spender_and_tells_staff(priced, acme, bluegum, django_capture_on_commit_callbacks):
    steady_week(acme, 24_000)
    steady_week(bluegum, 24_000)
    spend(acme, tokens=30_000, ago=timedelta(minutes=5))  # A$30: thirty times its usual hour
    spend(bluegum, tokens=1_500, ago=timedelta(minutes=5))
    with django_capture_on_commit_callbacks(execute=True):
        action = cost_guard_check()
    assert action.tenant == acme and action.kind == "throttle"
    effective = limits.tenant_limits(acme)
    assert (effective["rpm_limit"], effective["tpm_limit"]) == (10, 20_000)
    assert limits.tenant_limits(bluegum)["rpm_limit"] == 600
    assert mail.outbox[-1].to == ["ops@wattle.example"] and "Acme Contact" in mail.outbox[-1].subject
    assert AuditEntry.objects.filter(action="cost_guard.throttle", tenant=acme).exists()
    assert active_actions() == [action]
    assert cost_guard_check() is None  # no second action while the first stands


def test_normal_spend_is_left_alone(priced, acme):
    steady_week(acme, 240_000)  # A$10 an hour
    spend(acme, tokens=12_000, ago=timedelta(minutes=5))
    assert cost_guard_check() is None


def test_platform_threshold_acts_on_the_top_spender(priced, acme, bluegum, settings):
    settings.BILLING_COST_GUARD_PLATFORM_DAILY_AUD = 10.0
    steady_week(acme, 24_000_000)  # a big, steady customer: no spike of its own
    spend(acme, tokens=1_100_000, ago=timedelta(minutes=5))
    spend(bluegum, tokens=2_000, ago=timedelta(minutes=5))
    action = cost_guard_check()
    assert action.tenant == acme and "daily threshold" in action.reason


def test_suspend_action_and_one_click_lift(priced, acme, staff, settings, django_capture_on_commit_callbacks):
    settings.BILLING_COST_GUARD_ACTION = "suspend"
    steady_week(acme, 24_000)
    spend(acme, tokens=30_000, ago=timedelta(minutes=5))
    with django_capture_on_commit_callbacks(execute=True):
        action = cost_guard_check()
    acme.refresh_from_db()
    assert acme.status == Tenant.Status.SUSPENDED
    with django_capture_on_commit_callbacks(execute=True):
        cost_guard_lift(action=action, actor=staff)
    acme.refresh_from_db()
    assert acme.status == Tenant.Status.ACTIVE and active_actions() == []
    assert AuditEntry.objects.filter(action="cost_guard.lift", actor=staff).exists()


def test_lifting_a_throttle_restores_the_previous_overrides(priced, acme, staff):
    services.tenant_quota_set(tenant=acme, rpm_limit=300)
    steady_week(acme, 24_000)
    spend(acme, tokens=30_000, ago=timedelta(minutes=5))
    action = cost_guard_check()
    assert limits.tenant_limits(acme)["rpm_limit"] == 10
    cost_guard_lift(action=action, actor=staff)
    effective = limits.tenant_limits(acme)
    assert effective["rpm_limit"] == 300 and effective["tpm_limit"] == 400_000
    assert CostGuardAction.objects.get().lifted_by == staff


def test_disabled_guard_does_nothing(priced, acme, settings):
    settings.BILLING_COST_GUARD_ENABLED = False
    spend(acme, tokens=30_000, ago=timedelta(minutes=5))
    assert cost_guard_check() is None
