"""Live quota as the consoles read it: the numbers are what the data plane's limiter counted, per tenant and per
key, in Sydney's windows; effective limits say where they come from; staff see who is near a limit."""

from __future__ import annotations

from datetime import datetime
from decimal import Decimal
from zoneinfo import ZoneInfo

import pytest

from billing import limits, services
from billing.models import BudgetAlert, Plan
from billing.quota_reads import (
    _resolve,
    budget_notices,
    near_limits,
    quota_report,
    tenant_limits_explained,
    windows_at,
)
from core import quotas
from core.redis import get_redis
from inference.gateway.errors import GatewayError
from tenants.models import ApiKey, Tenant

pytestmark = pytest.mark.django_db

SYDNEY = ZoneInfo("Australia/Sydney")
NOW = datetime(2026, 11, 11, 10, 0, 5, tzinfo=SYDNEY).timestamp()  # early in a minute, mid-day, mid-month


@pytest.fixture
def starter(db, django_capture_on_commit_callbacks):
    with django_capture_on_commit_callbacks(execute=True):  # its tenants' records are republished
        return services.plan_save(plan=Plan(
            slug="starter", name="Starter", is_default=True, rpm_limit=10, tpm_limit=1_000, max_concurrent=5,
            daily_token_limit=10_000, monthly_token_budget=100_000, monthly_spend_cap_aud=Decimal("10.00"),
        ))


def by_kind(meters) -> dict:
    return {m.kind: m for m in meters}


def test_numbers_are_what_the_limiter_counted(acme, starter, issue_key, limiter_at,
                                              django_capture_on_commit_callbacks):
    with django_capture_on_commit_callbacks(execute=True):
        services.tenant_quota_set(tenant=acme, tpm_limit=2_000)
    key = issue_key(acme)
    limiter = limiter_at(NOW)
    first = limiter.admit(key, tokens=100, spend=50_000)
    limiter.admit(key, tokens=100, spend=50_000)
    limiter.admit(key, tokens=100, spend=50_000)
    limiter.settle(first, tokens=40, spend=20_000)  # it used 40 tokens: the rest of the reservation comes back

    report = quota_report(tenant=acme, now=NOW)
    meters = by_kind(report.meters)
    assert (meters["rpm"].used, meters["rpm"].limit, meters["rpm"].remaining) == (3, 10, 7)
    assert (meters["tpm"].used, meters["tpm"].limit, meters["tpm"].remaining) == (240, 2_000, 1_760)
    assert (meters["concurrent"].used, meters["concurrent"].remaining) == (2, 3)  # the settled one left
    assert meters["day_tokens"].used == meters["month_tokens"].used == 240
    assert meters["month_spend"].used == Decimal("0.12") and meters["month_spend"].remaining == Decimal("9.88")
    assert meters["rpm"].percent == 30
    assert {k: m.source for k, m in meters.items()} == {
        "rpm": "plan", "tpm": "override", "concurrent": "plan", "day_tokens": "plan", "month_tokens": "plan",
        "month_spend": "plan",
    }
    assert report.plan == starter and report.limits.plan_is_default


def test_windows_end_at_sydney_boundaries(acme, starter, issue_key, limiter_at):
    key = issue_key(acme)
    limiter_at(NOW).admit(key, tokens=100)
    windows = windows_at(NOW)
    resets = {kind.name: windows.resets_at(kind) for kind in quotas.KINDS}
    assert resets["rpm"] == resets["tpm"] == datetime(2026, 11, 11, 10, 1, tzinfo=SYDNEY)
    assert resets["day_tokens"] == datetime(2026, 11, 12, tzinfo=SYDNEY)
    assert resets["month_tokens"] == resets["month_spend"] == datetime(2026, 12, 1, tzinfo=SYDNEY)
    assert resets["day_tokens"].tzname() == "AEDT" and resets["concurrent"] is None
    # A minute later the per-minute counters start again; the day and month carry on.
    meters = by_kind(quota_report(tenant=acme, now=NOW + 60).meters)
    assert (meters["rpm"].used, meters["tpm"].used, meters["day_tokens"].used) == (0, 0, 100)
    # And the limiter agrees: the new minute admits again.
    assert limiter_at(NOW + 60).admit(key, tokens=1) is not None


def test_key_counters_are_read_for_keys_with_limits_of_their_own(acme, starter, issue_key, limiter_at):
    narrow = issue_key(acme, name="narrow", limits={"rpm_limit": 4, "monthly_spend_cap_aud": Decimal("2.00")})
    shared = issue_key(acme, name="shared")
    limiter = limiter_at(NOW)
    for _ in range(3):
        limiter.admit(narrow, tokens=10, spend=1_000)
    limiter.admit(shared, tokens=5)
    api_keys = list(ApiKey.objects.filter(tenant=acme).order_by("name"))
    report = quota_report(tenant=acme, api_keys=api_keys, now=NOW)
    narrow_q, shared_q = report.keys
    assert narrow_q.counted and not shared_q.counted
    key_meters = by_kind(narrow_q.meters)
    assert (key_meters["rpm"].used, key_meters["rpm"].limit, key_meters["rpm"].source) == (3, 4, "key")
    assert key_meters["tpm"].used == 30 and key_meters["tpm"].limit is None  # counted, no limit of its own
    assert key_meters["month_spend"].used == Decimal("0.00") and key_meters["month_spend"].limit == Decimal("2.00")
    assert by_kind(shared_q.meters)["rpm"].used == 0
    assert by_kind(report.meters)["rpm"].used == 4  # the organisation counts both keys
    # The limiter refuses the narrow key's fifth request, as the numbers say.
    limiter.admit(narrow, tokens=10)
    with pytest.raises(GatewayError):
        limiter.admit(narrow, tokens=10)


def test_a_key_asking_for_more_than_its_organisation_shows_the_organisations(acme, starter):
    api_key = ApiKey.objects.create(tenant=acme, key_id="k0000000wide", name="wide", secret_hash="x", rpm_limit=50)
    [line] = [line for line in quota_report(tenant=acme, api_keys=[api_key], now=NOW).keys[0].lines
              if line.meter.kind == "rpm"]
    assert (line.own, line.meter.limit, line.meter.source, line.organisation.limit) == (50, 10, "capped", 10)


def test_a_report_costs_one_redis_round_trip(acme, starter, issue_key, monkeypatch):
    for n in range(5):
        issue_key(acme, name=f"k{n}", limits={"rpm_limit": 5})
    calls = []
    real = get_redis()

    class Spy:
        def __getattr__(self, name):
            calls.append(name)
            return getattr(real, name)

    monkeypatch.setattr("billing.quota_reads.get_redis", Spy)
    quota_report(tenant=acme, api_keys=list(ApiKey.objects.filter(tenant=acme)), now=NOW)
    assert calls == ["pipeline"]


@pytest.mark.parametrize("case", ["no quota", "quota without plan", "own plan with overrides", "no default plan"])
def test_limit_sources_resolve_as_the_published_limits(acme, starter, case):
    if case == "quota without plan":
        services.tenant_quota_set(tenant=acme, rpm_limit=3)
    elif case == "own plan with overrides":
        big = services.plan_save(plan=Plan(slug="big", name="Big", rpm_limit=1_000))
        services.tenant_quota_set(tenant=acme, plan=big, monthly_spend_cap_aud=Decimal("5.00"))
    elif case == "no default plan":
        Plan.objects.filter(pk=starter.pk).update(is_default=False)
    explained = tenant_limits_explained(tenant=acme)
    assert explained.values == limits.tenant_limits(acme)
    assert _resolve(None, None).values == dict.fromkeys(limits.LIMIT_FIELDS)


def test_near_limits_lists_the_closest_first(acme, bluegum, starter, issue_key, limiter_at, alice,
                                            django_assert_max_num_queries, django_capture_on_commit_callbacks):
    from tenants.services import tenant_create

    with django_capture_on_commit_callbacks(execute=True):
        quiet = tenant_create(name="Quiet Co", owner=None)
    acme_key, bluegum_key, quiet_key = issue_key(acme), issue_key(bluegum), issue_key(quiet)
    limiter = limiter_at(NOW)
    for _ in range(9):  # 90% of 10 requests per minute
        limiter.settle(limiter.admit(acme_key, tokens=1), tokens=1)
    limiter.admit(bluegum_key, tokens=850)  # 85% of 1,000 tokens per minute
    for _ in range(5):  # 50%: not near
        limiter.settle(limiter.admit(quiet_key, tokens=1), tokens=1)
    with django_assert_max_num_queries(3):
        rows = near_limits(threshold=80, now=NOW)
    assert [(r.tenant, r.worst.kind, r.worst.percent) for r in rows] == [(acme, "rpm", 90), (bluegum, "tpm", 85)]
    Tenant.objects.filter(pk=acme.pk).update(status=Tenant.Status.CLOSED)
    assert [r.tenant for r in near_limits(threshold=80, now=NOW)] == [bluegum]
    assert near_limits(threshold=80, now=NOW + 60) == []  # a new minute


def test_budget_notices_say_how_much_and_when_it_resets(acme):
    alerts = [
        BudgetAlert(tenant=acme, budget="month_tokens", period="202611", threshold=80, used=800_000,
                    limit=1_000_000),
        BudgetAlert(tenant=acme, budget="day_tokens", period="20261111", threshold=100, used=10_000, limit=10_000),
        BudgetAlert(tenant=acme, budget="month_spend", period="202611", threshold=50, used=5_250_000,
                    limit=10_000_000),
    ]
    notices = budget_notices(alerts=alerts)
    assert [(n.threshold, n.label, n.amounts) for n in notices] == [
        (100, "daily token budget", "10,000 of 10,000 tokens"),
        (80, "monthly token budget", "800,000 of 1,000,000 tokens"),
        (50, "monthly spend cap", "A$5.25 of A$10.00"),
    ]
    assert notices[0].exhausted and not notices[1].exhausted
    assert notices[0].resets_at == datetime(2026, 11, 12, tzinfo=SYDNEY)
    assert notices[1].resets_at == datetime(2026, 12, 1, tzinfo=SYDNEY)
    december = budget_notices(alerts=[BudgetAlert(budget="month_tokens", period="202612", threshold=50, used=1,
                                                  limit=2)])
    assert december[0].resets_at == datetime(2027, 1, 1, tzinfo=SYDNEY)
