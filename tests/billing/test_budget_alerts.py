"""Budget alerts at 50 / 80 / 100%: once per threshold per period, emailed to billing contacts, audited."""

from __future__ import annotations

from datetime import datetime
from decimal import Decimal
from zoneinfo import ZoneInfo

import pytest
from django.core import mail

from audit.models import AuditEntry
from billing import services
from billing.budget_alerts import budget_alerts_check
from billing.models import BudgetAlert
from billing.selectors import budget_banner

NOW = datetime(2026, 11, 11, 10, 0, tzinfo=ZoneInfo("Australia/Sydney")).timestamp()


@pytest.fixture
def use(issue_key, limiter_at):
    """use(tenant, budget, total, now) -> drive real admissions until the limiter has counted ``total``."""
    keys, counted = {}, {}

    def drive(tenant, budget: str, total: int, now: float = NOW) -> None:
        key = keys.setdefault(tenant.pk, issue_key(tenant))
        already = counted.get((tenant.pk, budget, now), 0)
        amount = total - already
        if budget == "month_spend":
            limiter_at(now).admit(key, tokens=0, spend=amount)
        else:
            limiter_at(now).admit(key, tokens=amount)
        counted[(tenant.pk, budget, now)] = total

    return drive


@pytest.fixture
def budgeted(acme, internal_plan, django_capture_on_commit_callbacks):
    """Acme with a small monthly budget and spend cap; its other limits (Internal's) never get in the way."""
    with django_capture_on_commit_callbacks(execute=True):
        services.tenant_quota_set(tenant=acme, plan=internal_plan, monthly_token_budget=1000,
                                  monthly_spend_cap_aud=Decimal("10.00"))
    return acme


@pytest.fixture
def without_limits(django_capture_on_commit_callbacks):
    """without_limits(tenant): put ``tenant`` on a plan without any limit, as staff may choose explicitly."""
    from billing.models import Plan

    def lift(tenant):
        with django_capture_on_commit_callbacks(execute=True):
            plan = services.plan_save(plan=Plan(slug="unlimited", name="Unlimited"))
            services.tenant_quota_set(tenant=tenant, plan=plan)
        return tenant

    return lift


@pytest.mark.django_db
def test_thresholds_are_announced_once_each(budgeted, alice, use):
    use(budgeted, "month_tokens", 400)
    assert budget_alerts_check(now=NOW) == []
    use(budgeted, "month_tokens", 550)
    assert [a.threshold for a in budget_alerts_check(now=NOW)] == [50]
    use(budgeted, "month_tokens", 850)
    assert [a.threshold for a in budget_alerts_check(now=NOW)] == [80]
    assert budget_alerts_check(now=NOW) == []  # nothing new
    use(budgeted, "month_tokens", 1000)
    assert [a.threshold for a in budget_alerts_check(now=NOW)] == [100]
    assert BudgetAlert.objects.filter(tenant=budgeted).count() == 3
    assert AuditEntry.objects.filter(action="budget.alert", tenant=budgeted).count() == 3


@pytest.mark.django_db
def test_alerts_are_emailed_to_billing_contacts(budgeted, alice, member_of, django_capture_on_commit_callbacks, use):
    member_of(budgeted, "billing", email="accounts@acme.example")
    member_of(budgeted, "developer", email="dev@acme.example")
    use(budgeted, "month_tokens", 1000)
    with django_capture_on_commit_callbacks(execute=True):
        budget_alerts_check(now=NOW)
    subjects = sorted(m.subject for m in mail.outbox)
    assert subjects == [f"[Wattle] Acme Contact: {t}% of your monthly token budget used" for t in (100, 50, 80)]
    recipients = set(mail.outbox[0].to)
    assert recipients == {"billing@acme.example", "alice@acme.example", "accounts@acme.example"}
    full = next(m for m in mail.outbox if "100%" in m.subject)
    assert "1,000 tokens" in full.body and "refused until the budget resets" in full.body


@pytest.mark.django_db
def test_spend_alerts_speak_in_dollars(budgeted, django_capture_on_commit_callbacks, use):
    use(budgeted, "month_spend", 8_500_000)  # A$8.50 of A$10.00
    with django_capture_on_commit_callbacks(execute=True):
        alerts = budget_alerts_check(now=NOW)
    assert [a.threshold for a in alerts] == [50, 80]
    assert "A$8.50" in mail.outbox[-1].body and "A$10.00" in mail.outbox[-1].body


@pytest.mark.django_db
def test_a_new_period_announces_again(budgeted, use):
    use(budgeted, "month_tokens", 600)
    budget_alerts_check(now=NOW)
    december = datetime(2026, 12, 2, 9, 0, tzinfo=ZoneInfo("Australia/Sydney")).timestamp()
    use(budgeted, "month_tokens", 600, now=december)
    assert [(a.period, a.threshold) for a in budget_alerts_check(now=december)] == [("202612", 50)]


@pytest.mark.django_db
def test_tenants_without_budgets_and_other_tenants_are_untouched(budgeted, bluegum, without_limits, use):
    without_limits(bluegum)
    use(bluegum, "month_tokens", 10**9)
    use(budgeted, "month_tokens", 100)
    assert budget_alerts_check(now=NOW) == []


@pytest.mark.django_db
def test_banner_shows_the_highest_threshold_of_the_current_period(budgeted, settings, use):
    import time

    now = time.time()
    use(budgeted, "month_tokens", 900, now=now)
    budget_alerts_check(now=now)
    banner = budget_banner(tenant=budgeted)
    assert [(a.budget, a.threshold) for a in banner] == [("month_tokens", 80)]
