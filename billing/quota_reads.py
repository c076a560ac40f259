"""Live quota for the consoles and the management API: each effective limit, where it comes from, and what the
data plane's limiter has counted in the current windows.

The numbers are the admission counters themselves (``inference.gateway.limits``), read in one pipelined Redis
round trip per page however many keys are shown. Token counters hold reservations (prompt + ``max_tokens``)
while requests run and true counts once they end, exactly what the next admission is checked against.

The data plane keeps per-key counters only for keys that have limits of their own; a key without any shares
its organisation's limits and is not counted separately (``KeyQuota.counted`` is False).
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from decimal import Decimal

from billing import limits
from billing.models import BudgetAlert, Plan, TenantQuota
from core import quotas
from core.counters import read_usage
from core.redis import get_redis
from tenants.models import ApiKey, Tenant

KINDS = quotas.NAMES
FIELD_OF = {kind.name: kind.field for kind in quotas.KINDS}
LABELS = {kind.name: kind.label for kind in quotas.KINDS}
# Budgets and per-minute rates a tenant can be "near"; concurrency comes and goes too fast to be worth a list.
WATCHED = ("rpm", "tpm", "day_tokens", "month_tokens", "month_spend")


# --- windows -------------------------------------------------------------------------------------------
Windows = quotas.Windows
windows_at = quotas.windows_at


# --- effective limits and where they come from --------------------------------------------------------
@dataclass(frozen=True)
class TenantLimits:
    values: dict[str, int | Decimal | None]  # by field name, as ``billing.limits.tenant_limits``
    sources: dict[str, str]  # by field name: "override", "plan" or "" (no limit)
    plan: Plan | None
    plan_is_default: bool  # the tenant follows whichever plan is the default


def _resolve(quota: TenantQuota | None, default: Plan | None) -> TenantLimits:
    """Plan defaults, then staff overrides (``core.quotas.resolve``, as every caller), on rows already fetched."""
    resolved, plan = limits.tenant_limits_resolved(quota, default)
    return TenantLimits(values=resolved.values, sources=resolved.sources, plan=plan,
                        plan_is_default=quota is None or quota.plan is None)


def tenant_limits_explained(*, tenant: Tenant) -> TenantLimits:
    quota = TenantQuota.objects.filter(tenant=tenant).select_related("plan").first()
    default = limits.default_plan() if quota is None or quota.plan is None else None
    return _resolve(quota, default)


# --- meters ----------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Meter:
    """One limit and its use in the current window. Spend is in AUD; everything else is a count."""

    kind: str
    limit: int | Decimal | None
    used: int | Decimal
    source: str = ""
    resets_at: datetime | None = None

    @property
    def label(self) -> str:
        return LABELS[self.kind]

    @property
    def field(self) -> str:
        return FIELD_OF[self.kind]

    @property
    def is_money(self) -> bool:
        return self.kind == "month_spend"

    @property
    def remaining(self) -> int | Decimal | None:
        if self.limit is None:
            return None
        return max(self.limit - self.used, 0)

    @property
    def percent(self) -> int | None:
        """Whole percent used, rounded down (so 100 means the limit is reached)."""
        if self.limit is None or self.limit <= 0:
            return None
        return int(Decimal(self.used) * 100 // Decimal(self.limit))

    @property
    def source_or_none(self) -> str | None:
        return self.source or None

    @property
    def level(self) -> str:
        percent = self.percent
        if percent is None or percent < 80:
            return "ok"
        return "over" if percent >= 100 else "near"


_micro_to_aud = quotas.micro_to_aud


def _meters(values: dict[str, int | Decimal | None], used: dict[str, int], sources: dict[str, str],
            windows: Windows) -> list[Meter]:
    meters = []
    for kind in KINDS:
        amount = used.get(kind, 0)
        meters.append(Meter(
            kind=kind, limit=values.get(FIELD_OF[kind]),
            used=_micro_to_aud(amount) if kind == "month_spend" else amount,
            source=sources.get(FIELD_OF[kind], ""), resets_at=windows.resets_at(quotas.BY_NAME[kind]),
        ))
    return meters


def _read_counters(scopes: list[str], now: float) -> dict[str, dict[str, int]]:
    """Every counter of every scope in one round trip, as the limiter itself reads them."""
    return read_usage(get_redis(), scopes, now)


# --- the report ------------------------------------------------------------------------------------
@dataclass(frozen=True)
class KeyLine:
    meter: Meter  # the limit that applies to the key alone (its own, capped at the organisation's) and its use
    own: int | Decimal | None  # what the key asks for
    organisation: Meter


@dataclass(frozen=True)
class KeyQuota:
    api_key: ApiKey
    counted: bool  # the data plane counts this key on its own (it has limits of its own)
    meters: list[Meter]
    lines: list[KeyLine]

    @property
    def meters_by_kind(self) -> dict[str, Meter]:
        return {m.kind: m for m in self.meters}


@dataclass(frozen=True)
class QuotaReport:
    tenant: Tenant
    limits: TenantLimits
    windows: Windows
    meters: list[Meter]
    keys: list[KeyQuota] = field(default_factory=list)

    @property
    def plan(self) -> Plan | None:
        return self.limits.plan

    @property
    def meters_by_kind(self) -> dict[str, Meter]:
        return {m.kind: m for m in self.meters}


def _key_sources(own: dict, capped: dict) -> dict[str, str]:
    sources = {}
    for name, value in capped.items():
        if value is None:
            sources[name] = ""
        elif own.get(name) is not None and own[name] > value:
            sources[name] = "capped"  # set above the organisation's limit, which applies instead
        else:
            sources[name] = "key"
    return sources


def quota_report(*, tenant: Tenant, api_keys: list[ApiKey] | None = None, now: float | None = None) -> QuotaReport:
    """The tenant's effective limits with their sources and live use, and each of ``api_keys`` likewise."""
    now = now if now is not None else time.time()
    windows = windows_at(now)
    explained = tenant_limits_explained(tenant=tenant)
    api_keys = list(api_keys or [])
    per_key = {}
    for api_key in api_keys:
        own = limits.row_limits(api_key)
        capped = limits.key_limits(api_key, explained.values)
        per_key[api_key.key_id] = (own, capped, bool(limits.for_data_plane(capped)))
    scopes = [f"t:{tenant.pk}"] + [f"k:{key_id}" for key_id, (_o, _c, counted) in per_key.items() if counted]
    counts = _read_counters(scopes, now)
    tenant_meters = _meters(explained.values, counts[f"t:{tenant.pk}"], explained.sources, windows)
    report_keys = []
    for api_key in api_keys:
        own, capped, counted = per_key[api_key.key_id]
        meters = _meters(capped, counts.get(f"k:{api_key.key_id}", {}), _key_sources(own, capped), windows)
        lines = [KeyLine(meter=m, own=own[m.field], organisation=t) for m, t in zip(meters, tenant_meters, strict=True)]
        report_keys.append(KeyQuota(api_key=api_key, counted=counted, meters=meters, lines=lines))
    return QuotaReport(tenant=tenant, limits=explained, windows=windows, meters=tenant_meters, keys=report_keys)


# --- staff: who is near or over a limit ------------------------------------------------------------
@dataclass(frozen=True)
class NearLimit:
    tenant: Tenant
    plan: Plan | None
    meters: list[Meter]  # the watched limits at or above the threshold, closest first

    @property
    def worst(self) -> Meter:
        return self.meters[0]


def near_limits(*, threshold: int = 80, now: float | None = None) -> list[NearLimit]:
    """Tenants at or above ``threshold`` percent of a budget in its current period, or of their requests or
    tokens per minute in the current minute; the closest to (or furthest over) a limit first.

    Three queries and one Redis round trip whatever the number of tenants."""
    now = now if now is not None else time.time()
    windows = windows_at(now)
    default = limits.default_plan()
    overrides = {q.tenant_id: q for q in TenantQuota.objects.select_related("plan")}
    candidates = []
    for tenant in Tenant.objects.exclude(status=Tenant.Status.CLOSED).order_by("name"):
        explained = _resolve(overrides.get(tenant.pk), default)
        if any(explained.values[FIELD_OF[kind]] for kind in WATCHED):
            candidates.append((tenant, explained))
    counts = _read_counters([f"t:{tenant.pk}" for tenant, _ in candidates], now)
    found = []
    for tenant, explained in candidates:
        meters = [
            m for m in _meters(explained.values, counts[f"t:{tenant.pk}"], explained.sources, windows)
            if m.kind in WATCHED and m.percent is not None and m.percent >= threshold
        ]
        if meters:
            meters.sort(key=lambda m: Decimal(m.used) / Decimal(m.limit), reverse=True)
            found.append(NearLimit(tenant=tenant, plan=explained.plan, meters=meters))
    found.sort(key=lambda n: (-(Decimal(n.worst.used) / Decimal(n.worst.limit)), n.tenant.name))
    return found


# --- the console's budget banner -------------------------------------------------------------------
@dataclass(frozen=True)
class BudgetNotice:
    threshold: int
    label: str  # "monthly token budget"
    amounts: str  # "800,000 of 1,000,000 tokens", "A$8.50 of A$10.00"
    resets_at: datetime

    @property
    def exhausted(self) -> bool:
        return self.threshold >= 100


def _amounts(budget: str, used: int, limit: int) -> str:
    if budget == BudgetAlert.Budget.MONTH_SPEND:
        return f"{quotas.format_aud(_micro_to_aud(used))} of {quotas.format_aud(_micro_to_aud(limit))}"
    return f"{used:,} of {limit:,} tokens"


def _period_end(alert: BudgetAlert) -> datetime:
    """When the alert's day or month ends, in Sydney time (``core.quotas``' calendar)."""
    if alert.budget == BudgetAlert.Budget.DAY_TOKENS:
        start = datetime.strptime(alert.period, "%Y%m%d").replace(tzinfo=quotas.SYDNEY)
        later = start + timedelta(days=1, hours=3)  # past a daylight-saving change, inside the next day
        return datetime.fromtimestamp(quotas.window_starts(later.timestamp())[0], quotas.SYDNEY)
    start = datetime.strptime(alert.period, "%Y%m").replace(tzinfo=quotas.SYDNEY)
    later = start + timedelta(days=32)
    return datetime.fromtimestamp(quotas.window_starts(later.timestamp())[1], quotas.SYDNEY)


def budget_notices(*, alerts: list[BudgetAlert]) -> list[BudgetNotice]:
    """``billing.selectors.budget_banner``'s alerts in words: "80% of your monthly token budget (800,000 of
    1,000,000 tokens); it resets 1 Dec 2026 00:00 AEDT"."""
    return [
        BudgetNotice(threshold=alert.threshold, label=alert.get_budget_display(),
                     amounts=_amounts(alert.budget, alert.used, alert.limit), resets_at=_period_end(alert))
        for alert in sorted(alerts, key=lambda a: -a.threshold)
    ]
