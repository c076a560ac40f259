"""The cost guard (the brief's cost-spike runbook, automated).

Every few minutes it compares each tenant's spend in the last hour with its own baseline (its average hourly
spend over the previous week) and the platform's spend today with a daily threshold. On a spike it applies the
configured action to the tenant spending the most in the last hour: ``throttle`` (lower its requests and
tokens per minute) or ``suspend``. It emails staff, writes an audit entry, and the staff console shows a
banner with a one-click lift that restores exactly what the action changed.

Spend is priced from usage events (billing truth) at each tenant's prices (its plan's, ``billing.pricing``).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import datetime, timedelta
from decimal import Decimal
from zoneinfo import ZoneInfo

from django.conf import settings
from django.db import transaction
from django.db.models import Sum
from django.utils import timezone

from audit.services import record
from billing import limits, pricing
from billing.models import CostGuardAction, TenantQuota, UsageEvent
from billing.services import tenant_quota_set
from core.quotas import format_aud
from tenants.emails import send_branded_mail
from tenants.models import Tenant

logger = logging.getLogger("wattle.billing")
_BASELINE_DAYS = 7


@dataclass(frozen=True)
class Spend:
    tenant_id: str
    last_hour: Decimal
    baseline_hour: Decimal


def _spend_by_tenant(since: datetime, until: datetime) -> dict[str, Decimal]:
    totals: dict[str, Decimal] = {}
    rows = list(
        UsageEvent.objects.filter(created_at__gte=since, created_at__lt=until)
        .values("tenant_id", "model")
        .annotate(prompt=Sum("prompt_tokens"), completion=Sum("completion_tokens"))
    )
    book = pricing.PriceBook.load()
    plans = book.tenant_plans({row["tenant_id"] for row in rows})
    for row in rows:
        price = book.for_plan(plans[row["tenant_id"]]).get(row["model"])
        if price is None:
            continue
        cost = pricing.cost_aud(price, row["prompt"] or 0, row["completion"] or 0)
        key = str(row["tenant_id"])
        totals[key] = totals.get(key, Decimal(0)) + cost
    return totals


def spend_report(*, now: datetime | None = None) -> list[Spend]:
    """Every tenant that spent anything in the last hour, biggest first, with its own hourly baseline."""
    now = now or timezone.now()
    hour_ago = now - timedelta(hours=1)
    last_hour = _spend_by_tenant(hour_ago, now)
    baseline_total = _spend_by_tenant(hour_ago - timedelta(days=_BASELINE_DAYS), hour_ago)
    hours = Decimal(_BASELINE_DAYS * 24)
    report = [
        Spend(tenant_id=tenant_id, last_hour=spent, baseline_hour=baseline_total.get(tenant_id, Decimal(0)) / hours)
        for tenant_id, spent in last_hour.items()
    ]
    report.sort(key=lambda s: s.last_hour, reverse=True)
    return report


def _platform_today(now: datetime) -> Decimal:
    local_midnight = now.astimezone(ZoneInfo("Australia/Sydney")).replace(hour=0, minute=0, second=0, microsecond=0)
    return sum(_spend_by_tenant(local_midnight, now).values(), Decimal(0))


def _is_spike(spend: Spend) -> bool:
    floor = Decimal(str(settings.BILLING_COST_GUARD_MIN_HOURLY_AUD))
    return spend.last_hour >= floor and spend.last_hour > spend.baseline_hour * Decimal(
        str(settings.BILLING_COST_GUARD_SPIKE_FACTOR)
    )


def _notify_staff(action_id: int) -> None:
    action = CostGuardAction.objects.select_related("tenant").get(pk=action_id)
    if not settings.STAFF_ALERT_EMAILS:
        return
    send_branded_mail(
        f"[Wattle cost guard] {action.get_kind_display()} {action.tenant.name}",
        f"{action.reason}\n\nLift it from the staff console if this spend is expected.",
        settings.STAFF_ALERT_EMAILS,
    )


@transaction.atomic
def _act(*, tenant: Tenant, spend: Spend, reason: str) -> CostGuardAction:
    kind = settings.BILLING_COST_GUARD_ACTION
    if kind == CostGuardAction.Kind.SUSPEND:
        from tenants.services import tenant_set_status

        previous = {"status": tenant.status}
        tenant_set_status(tenant=tenant, status=Tenant.Status.SUSPENDED, reason=f"Cost guard: {reason}")
    else:
        quota = TenantQuota.objects.filter(tenant=tenant).first()
        previous = {name: getattr(quota, name) if quota else None for name in ("rpm_limit", "tpm_limit")}
        effective = limits.tenant_limits(tenant)
        ceilings = {"rpm_limit": settings.BILLING_COST_GUARD_THROTTLE_RPM,
                    "tpm_limit": settings.BILLING_COST_GUARD_THROTTLE_TPM}
        throttled = {name: min(v for v in (effective[name], ceiling) if v is not None)
                     for name, ceiling in ceilings.items()}
        tenant_quota_set(tenant=tenant, **throttled)
    action = CostGuardAction.objects.create(
        tenant=tenant, kind=kind, reason=reason, previous=previous,
        last_hour_aud=spend.last_hour.quantize(Decimal("0.01")),
        baseline_hour_aud=spend.baseline_hour.quantize(Decimal("0.01")),
    )
    record(action=f"cost_guard.{kind}", tenant=tenant, target=action,
           data={"reason": reason, "last_hour_aud": str(action.last_hour_aud),
                 "baseline_hour_aud": str(action.baseline_hour_aud), "previous": previous})
    transaction.on_commit(lambda: _notify_staff(action.pk))
    return action


def cost_guard_check(*, now: datetime | None = None) -> CostGuardAction | None:
    """Act on the top spender if its spend spiked or the platform passed its daily threshold."""
    if not settings.BILLING_COST_GUARD_ENABLED:
        return None
    now = now or timezone.now()
    report = spend_report(now=now)
    if not report:
        return None
    top = report[0]
    platform_today = _platform_today(now)
    over_platform = platform_today >= Decimal(str(settings.BILLING_COST_GUARD_PLATFORM_DAILY_AUD))
    if not (_is_spike(top) or over_platform):
        return None
    if CostGuardAction.objects.filter(tenant_id=top.tenant_id, lifted_at__isnull=True).exists():
        return None  # already acted on; staff decide what happens next
    tenant = Tenant.objects.get(pk=top.tenant_id)
    if tenant.status != Tenant.Status.ACTIVE:
        return None
    if over_platform and not _is_spike(top):
        threshold = format_aud(settings.BILLING_COST_GUARD_PLATFORM_DAILY_AUD)
        reason = (f"platform spend today {format_aud(platform_today)} passed the daily threshold {threshold}; "
                  f"{tenant.name} spent the most in the last hour ({format_aud(top.last_hour)})")
    else:
        reason = (f"{tenant.name} spent {format_aud(top.last_hour)} in the last hour against a baseline of "
                  f"{format_aud(top.baseline_hour)} an hour")
    logger.warning("cost guard: %s", reason)
    return _act(tenant=tenant, spend=top, reason=reason)


@transaction.atomic
def cost_guard_lift(*, action: CostGuardAction, actor, request=None) -> CostGuardAction:
    """Undo what the action changed (limits or suspension) and close it."""
    action = CostGuardAction.objects.select_for_update().select_related("tenant").get(pk=action.pk)
    if action.lifted_at is not None:
        return action
    tenant = action.tenant
    if action.kind == CostGuardAction.Kind.SUSPEND:
        from tenants.services import tenant_set_status

        tenant_set_status(tenant=tenant, status=action.previous.get("status", Tenant.Status.ACTIVE),
                          reason="Cost guard lifted", actor=actor, request=request)
    else:
        tenant_quota_set(tenant=tenant, actor=actor, request=request, **action.previous)
    action.lifted_at = timezone.now()
    action.lifted_by = actor
    action.save(update_fields=["lifted_at", "lifted_by"])
    record(action="cost_guard.lift", actor=actor, tenant=tenant, target=action, request=request,
           data={"kind": action.kind, "restored": action.previous})
    return action


def active_actions() -> list[CostGuardAction]:
    return list(CostGuardAction.objects.filter(lifted_at__isnull=True).select_related("tenant"))
