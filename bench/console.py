"""P9: the console's usage, billing and request-log pages (and the billing API and CSV export) with ten million
usage events of one tenant in PostgreSQL.

The events are written once by SQL (``generate_series``) and kept in the bench database for later runs; the rollup
job then reads them the way a worker does (its rate is reported too). Each page is fetched in-process through
Django's test client by a member of the tenant's billing role, so the time is the server's own: middleware,
queries and templates, no network. The baseline beside each page is the same page for a tenant with no usage
at all, from the same run: what the data adds.
"""

from __future__ import annotations

import statistics
import time
from dataclasses import dataclass
from datetime import timedelta

from bench.scenarios import Verdict

P9_TARGET = "p95 <= 200 ms server time with 10M usage events"
P9_TITLE = "console pages with 10M usage events"
TENANT_NAME = "Bench P9 console"
EMPTY_TENANT_NAME = "Bench P9 empty"
TARGET_MS = 200.0
MODELS = ("mistralai/Mistral-7B-Instruct-v0.3", "mistralai/Mistral-Small-24B-Instruct-2501",
          "mistralai/Mistral-Large-Instruct-2411", "mistralai/Ministral-8B-Instruct-2410")
KEYS = 20
DAYS = 62
_CHUNK = 1_000_000


@dataclass
class PageTiming:
    page: str
    samples_ms: list[float]
    empty_ms: list[float]
    status: int

    @property
    def p50(self) -> float:
        return statistics.median(self.samples_ms)

    @property
    def p95(self) -> float:
        ordered = sorted(self.samples_ms)
        return ordered[max(0, round(0.95 * len(ordered)) - 1)]

    @property
    def empty_p95(self) -> float:
        ordered = sorted(self.empty_ms)
        return ordered[max(0, round(0.95 * len(ordered)) - 1)]


def _tenant(name: str):
    from tenants import services
    from tenants.models import Tenant

    tenant = Tenant.objects.filter(name=name).first()
    return tenant or services.tenant_create(name=name, billing_email="bench@wattle.local")


def _member(tenant):
    from django.contrib.auth import get_user_model

    from tenants.models import Membership, Role

    email = f"p9-billing-{tenant.slug}@wattle.local"
    user = get_user_model().objects.filter(email=email).first()
    if user is None:
        user = get_user_model().objects.create_user(username=email, email=email, password=None)
        Membership.objects.create(tenant=tenant, user=user, role=Role.BILLING)
    return user


def load_events(tenant, count: int, log) -> None:
    """``count`` events spread over the last ``DAYS`` days, across ``KEYS`` keys and four models: written by
    SQL in chunks, once (a later run finds them)."""
    from django.db import connection

    from billing.models import UsageEvent

    have = UsageEvent.objects.filter(tenant=tenant).count()
    if have >= count:
        log(f"  {have:,} usage events already loaded")
        return
    table = UsageEvent._meta.db_table
    span_s = DAYS * 86_400
    started = time.perf_counter()
    with connection.cursor() as cursor:
        for first in range(have, count, _CHUNK):
            last = min(count, first + _CHUNK) - 1
            # Spread over the span by a multiplicative step (so consecutive ids aren't consecutive in time, as
            # ingest from many workers isn't); a few failures and streams among them.
            cursor.execute(
                f"""INSERT INTO {table} (request_id, tenant_id, key_id, endpoint, model, backend, status,
                        error_code, stream, client_disconnected, prompt_tokens, completion_tokens, ttft_ms,
                        duration_ms, created_at)
                    SELECT 'p9-' || n, %s, 'p9key' || (n %% {KEYS}), 'chat.completions',
                        (ARRAY[%s, %s, %s, %s])[1 + n %% 4], 'bench', CASE WHEN n %% 97 = 0 THEN 429 ELSE 200 END,
                        CASE WHEN n %% 97 = 0 THEN 'rate_limit_exceeded' ELSE '' END, n %% 2 = 0, false,
                        80 + n %% 400, 10 + n %% 300, 40 + n %% 60, 300 + n %% 900,
                        now() - make_interval(secs => ((n::bigint * 7919) %% {span_s}))
                    FROM generate_series(%s, %s) AS n""",  # noqa: S608 (constants and parameters)
                [str(tenant.pk), *MODELS, first, last],
            )
            log(f"  loaded {last + 1:,} of {count:,} events ({time.perf_counter() - started:.0f} s)")
    with connection.cursor() as cursor:
        cursor.execute(f"ANALYZE {table}")


def build_rollups(log) -> float:
    """Run the rollup job until it has read every event; returns events per second."""
    from billing.rollups import rollups_update

    started = time.perf_counter()
    read = rollups_update()
    seconds = time.perf_counter() - started
    rate = read / seconds if seconds > 0 and read else 0.0
    log(f"  rollups: {read:,} new events read in {seconds:.1f} s ({rate:,.0f} events/s)")
    return rate


def _pages(tenant) -> list[tuple[str, str]]:
    from django.urls import reverse
    from django.utils import timezone

    from billing.models import UsageEvent
    from billing.request_logs import encode_cursor

    today = timezone.localdate()
    slug = tenant.slug
    deep = UsageEvent.objects.filter(tenant=tenant).order_by("-created_at", "-pk")[5000:5001].first()
    logs = reverse("tenant_request_logs", args=[slug])
    return [
        ("usage (30 days)", reverse("tenant_usage", args=[slug])),
        ("billing", reverse("tenant_billing", args=[slug])),
        ("request log, page 1", logs),
        ("request log, page 101", f"{logs}?after={encode_cursor(deep)}" if deep else logs),
        ("request log, errors", f"{logs}?outcome=error"),
        ("usage CSV (31 days)", reverse("tenant_billing_usage_csv", args=[slug])
         + f"?start={today - timedelta(days=30):%Y-%m-%d}&end={today:%Y-%m-%d}"),
    ]


def _time(client, url: str, requests: int) -> tuple[list[float], int]:
    status = 0
    for _ in range(3):  # warm: template and query-plan caches, as a running server has them
        status = client.get(url, secure=True).status_code
    samples = []
    for _ in range(requests):
        started = time.perf_counter()
        response = client.get(url, secure=True)
        if response.streaming:
            b"".join(response.streaming_content)
        samples.append((time.perf_counter() - started) * 1000)
        status = response.status_code
    return samples, status


def run(*, events: int, requests: int, log) -> tuple[Verdict, list[PageTiming], float]:
    from django.test import Client

    tenant, empty = _tenant(TENANT_NAME), _tenant(EMPTY_TENANT_NAME)
    load_events(tenant, events, log)
    rate = build_rollups(log)
    timings = []
    full_client, empty_client = Client(HTTP_HOST="localhost"), Client(HTTP_HOST="localhost")
    full_client.force_login(_member(tenant))
    empty_client.force_login(_member(empty))
    for (name, url), (_same, empty_url) in zip(_pages(tenant), _pages(empty), strict=True):
        samples, status = _time(full_client, url, requests)
        empty_samples, _ = _time(empty_client, empty_url, requests)
        timing = PageTiming(name, samples, empty_samples, status)
        timings.append(timing)
        log(f"  {name:<24} p50 {timing.p50:7.1f} ms  p95 {timing.p95:7.1f} ms  (empty tenant p95 "
            f"{timing.empty_p95:6.1f} ms, x{timing.p95 / timing.empty_p95:.1f})  status {status}")
    worst = max(timings, key=lambda t: t.p95)
    passed = all(t.p95 <= TARGET_MS and t.status == 200 for t in timings)
    verdict = Verdict(
        scenario="P9", workers=0, target=P9_TARGET,
        direct=f"empty tenant p95 {worst.empty_p95:.0f} ms",
        gateway=f"worst p95 {worst.p95:.0f} ms ({worst.page})",
        comparison=f"x{worst.p95 / worst.empty_p95:.1f} of the empty tenant's",
        passed=passed,
        metrics={"events": events, "rollup_events_per_s": rate,
                 "pages": [{"page": t.page, "p50_ms": t.p50, "p95_ms": t.p95, "empty_p95_ms": t.empty_p95,
                            "status": t.status} for t in timings]},
        notes=[f"{t.page}: p95 {t.p95:.0f} ms" for t in timings],
    )
    return verdict, timings, rate
