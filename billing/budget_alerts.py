"""Budget alerts: at 50, 80 and 100% of a tenant's daily token, monthly token or monthly spend budget, once
per threshold per period, the billing contacts get an email and the console shows a banner. Audited.

Usage so far comes from the admission counters in Redis (settled to true token counts as requests end), so
an alert follows usage within the job's interval (a minute).
"""

from __future__ import annotations

import logging
import time

from django.db import IntegrityError, transaction

from audit.services import record
from billing import limits
from billing.models import BudgetAlert
from core import quotas
from core.counters import read_usage
from core.quotas import windows_at
from core.redis import get_redis
from tenants.emails import send_branded_mail
from tenants.models import Membership, Role, Tenant

logger = logging.getLogger("wattle.billing")

THRESHOLDS = (50, 80, 100)


def billing_contacts(tenant: Tenant) -> list[str]:
    emails = {tenant.billing_email} if tenant.billing_email else set()
    contacts = Membership.objects.filter(tenant=tenant, role__in=[Role.OWNER, Role.BILLING])
    emails |= set(contacts.values_list("user__email", flat=True))
    return sorted(e for e in emails if e)


def _describe(budget: str, value: int) -> str:
    if quotas.BY_NAME[budget].money:
        return quotas.format_aud(quotas.micro_to_aud(value))
    return f"{value:,} tokens"


def _send(alert_id: int) -> None:
    alert = BudgetAlert.objects.select_related("tenant").get(pk=alert_id)
    label = alert.get_budget_display()
    recipients = billing_contacts(alert.tenant)
    if not recipients:
        return
    subject = f"[Wattle] {alert.tenant.name}: {alert.threshold}% of your {label} used"
    body = (
        f"{alert.tenant.name} has used {_describe(alert.budget, alert.used)} of its {label} "
        f"({_describe(alert.budget, alert.limit)}), {alert.threshold}%.\n\n"
        + ("Requests are now refused until the budget resets or is raised.\n\n" if alert.threshold >= 100 else "")
        + "See usage and limits in the Wattle console."
    )
    send_branded_mail(subject, body, recipients)


@transaction.atomic
def _raise(*, tenant: Tenant, budget: str, period: str, threshold: int, used: int, limit: int) -> BudgetAlert | None:
    try:
        with transaction.atomic():
            alert = BudgetAlert.objects.create(
                tenant=tenant, budget=budget, period=period, threshold=threshold, used=used, limit=limit
            )
    except IntegrityError:
        return None  # this threshold was already announced in this period
    record(action="budget.alert", tenant=tenant, target=alert,
           data={"budget": budget, "period": period, "threshold": threshold, "used": used, "limit": limit})
    transaction.on_commit(lambda: _send(alert.pk))
    return alert


def budget_alerts_check(*, now: float | None = None) -> list[BudgetAlert]:
    """Raise the alerts every tenant's budgets call for now. Safe to run often and on several workers."""
    now = now or time.time()
    raised = []
    client = get_redis()
    for tenant in Tenant.objects.filter(status=Tenant.Status.ACTIVE):
        effective = limits.tenant_limits(tenant)
        budgets = {kind: effective[kind.field] for kind in quotas.BUDGETS if effective.get(kind.field) is not None}
        if not budgets:
            continue
        scope = f"t:{tenant.pk}"
        values = read_usage(client, [scope], now)[scope]
        windows = windows_at(now)
        for kind, limit_value in budgets.items():
            budget = kind.name
            limit = quotas.aud_to_micro(limit_value) if kind.money else int(limit_value)
            used = int(values[budget] or 0)
            if limit <= 0:
                continue
            period = windows.id_of(kind.window)
            for threshold in THRESHOLDS:
                if used * 100 >= limit * threshold:
                    alert = _raise(tenant=tenant, budget=budget, period=period, threshold=threshold, used=used,
                                   limit=limit)
                    if alert is not None:
                        raised.append(alert)
    return raised
