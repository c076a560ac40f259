from __future__ import annotations

from datetime import date, datetime, time, timedelta
from zoneinfo import ZoneInfo

from django.conf import settings
from django.db.models import Count, Max, Sum
from django.db.models.functions import Coalesce, TruncDate
from django.utils import timezone

from billing.models import BudgetAlert, CostGuardAction, ModelPrice, Plan, PlanModelPrice, TenantQuota, UsageEvent
from core.quotas import windows_at
from tenants.models import Tenant


def usage_recent(*, tenant: Tenant, limit: int = 20) -> list[UsageEvent]:
    return list(UsageEvent.objects.filter(tenant=tenant).order_by("-created_at")[:limit])


def _local_tz() -> ZoneInfo:
    return ZoneInfo(settings.TIME_ZONE)


def usage_window(*, since: date | None = None, until: date | None = None, days: int = 30) -> tuple[date, date]:
    """Whole local days, ``since`` to ``until`` inclusive; the last ``days`` days by default."""
    today = timezone.localdate()
    until = until or today
    since = since or until - timedelta(days=days - 1)
    return since, until


def _bounds(since: date, until: date) -> tuple[datetime, datetime]:
    tz = _local_tz()
    start = datetime.combine(since, time.min, tzinfo=tz)
    return start, datetime.combine(until + timedelta(days=1), time.min, tzinfo=tz)


def _totals(qs) -> dict:
    row = qs.aggregate(
        requests=Count("id"),
        prompt_tokens=Coalesce(Sum("prompt_tokens"), 0),
        completion_tokens=Coalesce(Sum("completion_tokens"), 0),
    )
    row["total_tokens"] = row["prompt_tokens"] + row["completion_tokens"]
    return row


def _grouped(qs, field: str) -> list[dict]:
    rows = (
        qs.values(field)
        .annotate(
            requests=Count("id"),
            prompt_tokens=Coalesce(Sum("prompt_tokens"), 0),
            completion_tokens=Coalesce(Sum("completion_tokens"), 0),
        )
        .order_by(field)
    )
    out = []
    for row in rows:
        row["total_tokens"] = row["prompt_tokens"] + row["completion_tokens"]
        out.append(row)
    return out


def usage_summary(*, tenant: Tenant, since: date, until: date) -> dict:
    """Requests and tokens for one tenant over whole local days: totals, by day, by model and by key."""
    start, end = _bounds(since, until)
    qs = UsageEvent.objects.filter(tenant=tenant, created_at__gte=start, created_at__lt=end)
    by_day = _grouped(qs.annotate(day=TruncDate("created_at", tzinfo=_local_tz())), "day")
    return {
        "since": since,
        "until": until,
        "totals": _totals(qs),
        "by_day": by_day,
        "by_model": _grouped(qs, "model"),
        "by_key": _grouped(qs, "key_id"),
    }


def key_last_used(*, tenant: Tenant, key_ids: list[str]) -> dict[str, datetime]:
    """When each key last served a request, from usage events (the data plane never writes the database)."""
    if not key_ids:
        return {}
    rows = (
        UsageEvent.objects.filter(tenant=tenant, key_id__in=key_ids)
        .values("key_id")
        .annotate(last=Max("created_at"))
    )
    return {row["key_id"]: row["last"] for row in rows}


def tenant_usage_totals(*, tenant: Tenant, days: int = 30) -> dict:
    since, until = usage_window(days=days)
    start, end = _bounds(since, until)
    return _totals(UsageEvent.objects.filter(tenant=tenant, created_at__gte=start, created_at__lt=end))


def budget_banner(*, tenant: Tenant) -> list[BudgetAlert]:
    """The highest threshold reached by each budget in its current period, for the console banner."""
    windows = windows_at(timezone.now().timestamp())
    current = BudgetAlert.objects.filter(tenant=tenant, period__in=[windows.day, windows.month]).order_by(
        "budget", "-threshold"
    )
    seen, shown = set(), []
    for alert in current:
        if alert.budget not in seen:
            seen.add(alert.budget)
            shown.append(alert)
    return shown


# --- staff -----------------------------------------------------------------------------------------
def tenant_quota(*, tenant: Tenant) -> TenantQuota | None:
    """The plan and overrides staff set for the tenant; None while it follows the default plan untouched."""
    return TenantQuota.objects.filter(tenant=tenant).select_related("plan").first()


def plans_with_tenant_counts() -> list[Plan]:
    """Every plan with ``tenant_count``: the tenants put on it explicitly (the default plan also covers the
    tenants without a plan of their own)."""
    return list(Plan.objects.annotate(tenant_count=Count("tenants")))


def plan_own_price_counts() -> dict[int, int]:
    """Plan id → how many models the plan prices itself (the plans page says which plans differ from the
    platform's price list)."""
    return dict(PlanModelPrice.objects.values("plan_id").annotate(n=Count("id")).values_list("plan_id", "n"))


def model_prices() -> list[ModelPrice]:
    return list(ModelPrice.objects.all())


def model_price(*, model: str) -> ModelPrice | None:
    return ModelPrice.objects.filter(model=model).first()


def cost_guard_standing(*, tenant: Tenant) -> CostGuardAction | None:
    """The cost guard's action on this tenant that staff have not lifted (it never stacks a second one)."""
    return CostGuardAction.objects.filter(tenant=tenant, lifted_at__isnull=True).order_by("-created_at").first()
