"""The quota rules both planes share: the kinds of limit, how effective limits are resolved, and the Sydney
calendar their windows follow.

``KINDS`` is the one table of limit kinds. Everything that knows a kind reads it from here: the model fields
(``LimitFields``), the forms, the console meters, the management API, budget alerts, the limiter's Redis
arguments and its 429s. Adding a kind means a row here, its counter in the admission script
(``core.counters``) and a migration for its field; ``tests/core/test_quota_kinds.py`` walks every consumer.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import date, datetime, timedelta
from decimal import ROUND_CEILING, ROUND_HALF_UP, Decimal
from typing import Any
from zoneinfo import ZoneInfo

from core import money

SYDNEY = ZoneInfo("Australia/Sydney")
MICRO = Decimal(1_000_000)  # spend travels in micro-AUD, so Redis counts integers
CENT = Decimal("0.01")


@dataclass(frozen=True, slots=True)
class LimitKind:
    name: str  # the data plane's name (Redis arguments, published records, meters, the API)
    field: str  # the model field on plans, tenant overrides and keys
    verbose_name: str  # the field's label in forms and the admin
    label: str  # the console meter's title
    refusal: str  # how a 429 names it: "Rate limit reached for ..."
    code: str  # the OpenAI error code of that 429
    window: str  # "minute", "day" or "month"; "" for concurrency (a slot frees when its request ends)
    counts: str  # what one request costs it: "requests" (one), "tokens" (its reservation) or "spend"
    maximum: int | None  # the largest value a form or the API accepts (money: 12 digits, 2 decimal places)
    help: str  # what the management API's schema says of its meter
    money: bool = False  # spend: AUD on the control plane, micro-AUD in Redis
    big: bool = False  # counts that outgrow a 32-bit integer field
    budget: bool = False  # budget alerts watch it (50, 80 and 100% within its window)


# In the order the admission script checks them (``core.counters``): the index is the script's kind number.
KINDS: tuple[LimitKind, ...] = (
    LimitKind("rpm", "rpm_limit", "requests per minute", "Requests per minute", "requests per minute",
              "rate_limit_exceeded", "minute", "requests", 10**7,
              "Requests per calendar minute."),
    LimitKind("tpm", "tpm_limit", "tokens per minute", "Tokens per minute", "tokens per minute",
              "rate_limit_exceeded", "minute", "tokens", 10**9,
              "Tokens (input + output) per calendar minute."),
    LimitKind("concurrent", "max_concurrent", "concurrent requests", "Concurrent requests", "concurrent requests",
              "rate_limit_exceeded", "", "requests", 10**5,
              "Requests in flight at once."),
    LimitKind("day_tokens", "daily_token_limit", "tokens per day", "Tokens per day", "daily token budget",
              "insufficient_quota", "day", "tokens", 10**12,
              "Tokens per day (Sydney time).", big=True, budget=True),
    LimitKind("month_tokens", "monthly_token_budget", "tokens per month", "Tokens per month",
              "monthly token budget", "insufficient_quota", "month", "tokens",
              10**13, "Tokens per calendar month (Sydney time).", big=True, budget=True),
    LimitKind("month_spend", "monthly_spend_cap_aud", "monthly spend cap (AUD)", "Spend per month",
              "monthly spend cap", "insufficient_quota", "month", "spend", None,
              "Spend per calendar month (Sydney time), AUD.", money=True, budget=True),
)
NAMES: tuple[str, ...] = tuple(kind.name for kind in KINDS)
FIELDS: tuple[str, ...] = tuple(kind.field for kind in KINDS)
BY_NAME: dict[str, LimitKind] = {kind.name: kind for kind in KINDS}
BY_FIELD: dict[str, LimitKind] = {kind.field: kind for kind in KINDS}
BUDGETS: tuple[LimitKind, ...] = tuple(kind for kind in KINDS if kind.budget)


def form_label(kind: LimitKind) -> str:
    return kind.verbose_name[:1].upper() + kind.verbose_name[1:]


def cost(kind: LimitKind, *, tokens: int, spend: int) -> int:
    """What one request reserves against ``kind``."""
    return 1 if kind.counts == "requests" else tokens if kind.counts == "tokens" else spend


def check_fields(names: Any) -> None:
    """Raise ValueError naming any limit field that isn't one (the services' guard against typos)."""
    unknown = set(names) - set(FIELDS)
    if unknown:
        raise ValueError(f"unknown limits: {sorted(unknown)}")


# --- money -----------------------------------------------------------------------------------------
def aud_to_micro(value: Decimal) -> int:
    return int((value * MICRO).to_integral_value(rounding=ROUND_CEILING))


def micro_to_aud(value: int) -> Decimal:
    return (Decimal(value) / MICRO).quantize(CENT, rounding=ROUND_HALF_UP)


format_aud = money.format_aud  # the one money formatter (core.money); kept here for the many callers


def recorded(value: Any) -> Any:
    """A limit as the audit trail records it: amounts as exact strings, counts as numbers, None as null."""
    return str(value) if isinstance(value, Decimal) else value


# --- resolution ------------------------------------------------------------------------------------
Limits = dict[str, Any]  # by field name; None: no limit at this level


@dataclass(frozen=True, slots=True)
class Resolved:
    """A tenant's effective limits and where each comes from: "override", "plan" or "" (no limit)."""

    values: Limits
    sources: dict[str, str]


def resolve(plan: Mapping[str, Any] | None, override: Mapping[str, Any] | None) -> Resolved:
    """Plan defaults, then staff overrides: an override set at a kind wins, else the plan's value."""
    values, sources = {}, {}
    for name in FIELDS:
        own = override.get(name) if override is not None else None
        if own is not None:
            values[name], sources[name] = own, "override"
        else:
            value = plan.get(name) if plan is not None else None
            values[name], sources[name] = value, ("plan" if value is not None else "")
    return Resolved(values=values, sources=sources)


def resolve_key(own: Mapping[str, Any], tenant: Mapping[str, Any]) -> Limits:
    """A key's own limits, capped at its tenant's (a key can only narrow what its tenant may do). None where the
    key sets none: the tenant-wide limit already covers it."""
    limits: Limits = {}
    for name in FIELDS:
        value, ceiling = own.get(name), tenant.get(name)
        limits[name] = None if value is None else (value if ceiling is None else min(value, ceiling))
    return limits


def for_data_plane(limits: Mapping[str, Any]) -> dict[str, int]:
    """Only the limits that are set, under the data plane's names, as integers (spend in micro-AUD)."""
    published = {}
    for name, value in limits.items():
        if value is None:
            continue
        kind = BY_FIELD[name]
        published[kind.name] = aud_to_micro(value) if kind.money else int(value)
    return published


# --- the Sydney calendar ---------------------------------------------------------------------------
@dataclass(slots=True)
class Windows:
    """The windows containing a moment: their ids (as the counters are tagged) and the seconds to their ends."""

    minute: str
    day: str
    month: str
    minute_reset_s: float
    day_reset_s: float
    month_reset_s: float
    at: float = 0.0  # the moment, epoch seconds

    @property
    def now(self) -> datetime:
        """The moment, in Sydney time."""
        return datetime.fromtimestamp(self.at, SYDNEY)

    def id_of(self, window: str) -> str:
        return {"minute": self.minute, "day": self.day, "month": self.month}[window]

    def reset_s(self, kind: LimitKind) -> float | None:
        """Seconds until ``kind``'s window ends; None for concurrency (a slot frees when its request ends)."""
        return {"minute": self.minute_reset_s, "day": self.day_reset_s, "month": self.month_reset_s}.get(kind.window)

    def resets_at(self, kind: LimitKind) -> datetime | None:
        seconds = self.reset_s(kind)
        return None if seconds is None else datetime.fromtimestamp(round(self.at + seconds), SYDNEY)


def _midnight(day: date) -> datetime:
    return datetime(day.year, day.month, day.day, tzinfo=SYDNEY)


class Calendar:
    """Window ids for "now", recomputing the Sydney day and month only when one ends (the limiter asks per
    request)."""

    def __init__(self) -> None:
        self._day_start = self._day_end = self._month_end = 0.0
        self._day = self._month = ""

    def now(self, now: float) -> Windows:
        if not self._day_start <= now < self._day_end:
            local = datetime.fromtimestamp(now, SYDNEY)
            first_of_next = (local.date().replace(day=1) + timedelta(days=32)).replace(day=1)
            self._day, self._month = local.strftime("%Y%m%d"), local.strftime("%Y%m")
            self._day_start = _midnight(local.date()).timestamp()
            self._day_end = _midnight(local.date() + timedelta(days=1)).timestamp()
            self._month_end = _midnight(first_of_next).timestamp()
        minute = math.floor(now / 60)
        return Windows(str(minute), self._day, self._month, (minute + 1) * 60 - now, self._day_end - now,
                       self._month_end - now, now)


def windows_at(now: float) -> Windows:
    """The windows containing ``now`` (epoch seconds)."""
    return Calendar().now(now)


def window_starts(now: float) -> tuple[float, float]:
    """When the Sydney day and month containing ``now`` began (epoch seconds)."""
    local = datetime.fromtimestamp(now, SYDNEY)
    return _midnight(local.date()).timestamp(), _midnight(local.date().replace(day=1)).timestamp()


def duration(seconds: float) -> str:
    """OpenAI's reset format: "1s", "6m0s", "1h2m3s"."""
    seconds = max(0, math.ceil(seconds))
    hours, rest = divmod(seconds, 3600)
    minutes, secs = divmod(rest, 60)
    if hours:
        return f"{hours}h{minutes}m{secs}s"
    if minutes:
        return f"{minutes}m{secs}s"
    return f"{secs}s"


def when(now: float, seconds: float) -> str:
    """A moment ``seconds`` after ``now`` as a 429 names it: "1 Jan 2027 00:00 AEDT"."""
    return datetime.fromtimestamp(now + seconds, SYDNEY).strftime("%-d %b %Y %H:%M %Z")
