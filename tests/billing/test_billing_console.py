"""The tenant billing page, its CSV export of usage and the staff revenue page: the numbers come from the usage
rollups (never the events), the projected bill follows its stated rule, and only the right people see them."""

from __future__ import annotations

import csv
import io
import re
import xml.etree.ElementTree as ET
from datetime import UTC, datetime, timedelta
from decimal import Decimal

import pytest
from django.utils import timezone

from billing.billing_reads import billing_overview
from billing.models import Invoice, Subscription
from billing.rollups import rollups_update
from billing.services import tenant_quota_set
from core.quotas import SYDNEY
from tenants import keys
from tenants.models import Role
from tests.billing.billing_data import period_usage, rollup, subscribe, used
from tests.conftest import sign_in

pytestmark = pytest.mark.django_db

SVG = "{http://www.w3.org/2000/svg}"


def _chart(page: str, title: str) -> ET.Element:
    for match in re.finditer(r"<svg .*?</svg>", page, flags=re.S):
        root = ET.fromstring(match.group(0))  # noqa: S314 (markup the page under test rendered)
        if root.find(f"{SVG}title").text == title:
            return root
    raise AssertionError(f"no chart {title!r}")


def _values(root: ET.Element, series: str) -> list[Decimal]:
    return [Decimal(r.get("data-value")) for r in root.iter(f"{SVG}rect") if r.get("data-series") == series]


# --- the projected bill ----------------------------------------------------------------------------
def test_projected_bill_charges_tokens_past_the_included_ones_and_projects_linearly(acme, business, prices):
    start = datetime(2026, 11, 3, 5, tzinfo=UTC)
    subscribe(acme, business, start=start)
    period_usage(acme, start, "keyA", "keyB")

    overview = billing_overview(tenant=acme, now=start + timedelta(days=10))

    assert overview.period.source == "subscription" and overview.period.start == start
    assert overview.usage.totals.prompt_tokens == 4_000_000  # the bucket before the period is not counted
    est = overview.estimate
    # To date: fee 99 + large in (2M - 1M) x A$2/M + large out (1.1M - 1M) x A$6/M + 7b in (2M - 1M) x A$0.20/M
    # + 7b out nothing (0.1M of 1M included).
    assert est.to_date == Decimal("99") + Decimal("2.0") + Decimal("0.6") + Decimal("0.2")
    # Ten days of thirty: every count x 3, then the same rule.
    assert est.factor == 3
    assert est.projected == Decimal("99") + Decimal("10.0") + Decimal("13.8") + Decimal("1.0")
    assert [(line.model, line.direction, line.billable) for line in est.to_date_lines] == [
        ("mistral-large", "input", 1_000_000), ("mistral-large", "output", 100_000),
        ("mistral-7b", "input", 1_000_000), ("mistral-7b", "output", 0)]


def test_a_period_starting_and_ending_inside_an_hour_counts_exactly_the_usage_inside_it(
        acme, business, prices, django_assert_max_num_queries):
    start = datetime(2026, 11, 3, 5, 37, 12, tzinfo=UTC)  # Stripe's periods start and end at any second
    end = subscribe(acme, business, start=start).current_period_end
    used(acme, start - timedelta(seconds=1), prompt=1)  # the Trial plan's, before the subscription
    used(acme, start, key="keyA", prompt=10, completion=1)  # its first second
    used(acme, start + timedelta(minutes=10), key="keyB", model="mistral-7b", prompt=100)
    used(acme, start + timedelta(hours=1), key="keyA", prompt=1_000)  # a whole hour: hourly totals
    used(acme, start + timedelta(days=2), key="keyA", prompt=10_000)  # a whole day: daily totals
    used(acme, end - timedelta(seconds=1), key="keyA", prompt=100_000)  # its last second
    used(acme, end, key="keyA", prompt=1_000_000)  # the next period's
    rollups_update()

    with django_assert_max_num_queries(30) as captured:
        usage = billing_overview(tenant=acme, now=start + timedelta(days=10)).usage
    # The part-hours at the two ends, and nothing else, are read from the usage events.
    assert sum("billing_usageevent" in q["sql"] for q in captured.captured_queries) == 2
    assert (usage.totals.requests, usage.totals.prompt_tokens, usage.totals.completion_tokens) == (5, 111_110, 1)
    # Each request rated and rounded up as the rollups rate it: 2 µA$ an input token and 6 an output token of
    # mistral-large, 0.2 an input token of mistral-7b.
    assert usage.totals.cost_micro_aud == 26 + 20 + 2_000 + 20_000 + 200_000
    assert usage.by_model["mistral-7b"].prompt_tokens == 100
    assert usage.by_model["mistral-large"].prompt_tokens == 111_010
    assert {k: line.prompt_tokens for k, line in usage.by_key.items()} == {"keyA": 111_010, "keyB": 100}
    sydney = {day.isoformat(): line.prompt_tokens for day, line in usage.by_day.items() if line.prompt_tokens}
    assert sydney == {"2026-11-03": 1_110, "2026-11-05": 10_000, "2026-12-03": 100_000}
    assert len(usage.days) == 31


def test_a_period_within_one_hour_is_read_from_its_events(acme, business, prices):
    start = datetime(2026, 11, 3, 5, 10, tzinfo=UTC)
    subscription = subscribe(acme, business, start=start)
    subscription.current_period_end = start + timedelta(minutes=30)
    subscription.save()
    for minutes, prompt in ((5, 1), (10, 10), (39, 100), (40, 1_000)):
        used(acme, start - timedelta(minutes=10) + timedelta(minutes=minutes), prompt=prompt)
    rollups_update()
    usage = billing_overview(tenant=acme, now=start + timedelta(minutes=20)).usage
    assert usage.totals.prompt_tokens == 110


def test_a_part_hour_is_rated_as_the_rollups_rate_it(acme, business, prices):
    import random

    from billing.models import UsageRollup
    from billing.usage_spans import span_usage

    subscribe(acme, business, start=datetime(2026, 11, 1, tzinfo=UTC))
    hour = datetime(2026, 11, 3, 5, tzinfo=UTC)
    rng = random.Random(7)
    for _ in range(200):
        used(acme, hour + timedelta(seconds=rng.randrange(3600)), key=rng.choice(["keyA", "keyB"]),
             model=rng.choice(["mistral-large", "mistral-7b", "unpriced"]), prompt=rng.randrange(30_000),
             completion=rng.randrange(9_000))
    rollups_update()
    rolled = {(r.key_id, r.model): (r.requests, r.prompt_tokens, r.completion_tokens, r.cost_micro_aud)
              for r in UsageRollup.objects.filter(tenant=acme, period="h", start=hour)}
    read = {(r.key_id, r.model): (r.requests, r.prompt_tokens, r.completion_tokens, r.cost_micro_aud)
            for r in span_usage(tenant_id=acme.pk, start=hour, end=hour + timedelta(hours=1))}
    assert read == rolled and len(read) == 6


def test_projection_counts_at_least_a_day_elapsed(acme, business, prices):
    start = datetime(2026, 11, 3, 5, tzinfo=UTC)
    subscribe(acme, business, start=start)
    used(acme, start, prompt=1_000_000 + 1_000)
    rollups_update()
    est = billing_overview(tenant=acme, now=start + timedelta(hours=2)).estimate
    assert est.factor == 30  # 30 days / 1 day, not 30 days / 2 hours
    assert est.projected == Decimal("99") + (Decimal(30_030_000) - 1_000_000) * Decimal("0.002") / 1000


def test_without_a_subscription_the_period_is_the_sydney_month(acme, prices):
    now = datetime(2026, 11, 16, 1, tzinfo=UTC)
    overview = billing_overview(tenant=acme, now=now)
    assert overview.period.source == "month"
    assert overview.period.start == datetime(2026, 11, 1, tzinfo=SYDNEY)
    assert overview.period.end == datetime(2026, 12, 1, tzinfo=SYDNEY)


# --- the page --------------------------------------------------------------------------------------
def test_billing_page_shows_plan_prices_usage_and_bill(owner_client, acme, billed):
    response = owner_client.get(f"/t/{acme.slug}/billing/")
    assert response.status_code == 200
    page = response.content.decode()
    for text in ("Business", "A$99.00", "1,000,000 input and 1,000,000 output tokens of each model",
                 # mistral-large per 1M: 0.002 and 0.006 per 1k x 1000
                 "<td>A$2.00 per 1M tokens</td><td>A$6.00 per 1M tokens</td>",
                 "<td>A$0.20 per 1M tokens</td><td>A$0.40 per 1M tokens</td>", 'id="bill-to-date">A$101.80<',
                 'id="projection-method"', "linearly", 'aria-current="page">Billing</a>', "IVR production",
                 "Active"):
        assert text in page, text
    assert "bluegum-only-model" not in page and "77,777" not in page
    assert "18,000,000" not in page and "9,000,000" not in page  # the bucket before the period


def test_charts_and_their_tables_add_up_to_the_rollups(owner_client, acme, billed):
    page = owner_client.get(f"/t/{acme.slug}/billing/").content.decode()
    per_day = _chart(page, "Tokens per day")
    assert sum(_values(per_day, "input")) == 4_000_000
    assert sum(_values(per_day, "output")) == 1_200_000
    assert per_day.get("role") == "img" and "input tokens 4,000,000" in per_day.get("aria-label")
    assert sum(_values(_chart(page, "A$ per day"), "cost")) == Decimal("11.04")  # 11,040,000 micro-A$
    by_model = _chart(page, "Tokens per model")
    assert sorted(_values(by_model, "input")) == [2_000_000, 2_000_000]
    assert sorted(_values(_chart(page, "A$ per key"), "cost")) == [Decimal("5.2"), Decimal("5.84")]
    # The tables beside the charts total the same.
    assert "<th scope=\"row\">Total</th><td>4,000,000</td><td>1,200,000</td>" in page
    assert "<th scope=\"row\">Total</th><td>A$11.04</td>" in page
    assert "style=" not in page


def test_billing_page_reads_rollups_not_usage_events(owner_client, acme, billed, django_assert_max_num_queries):
    with django_assert_max_num_queries(25) as captured:
        assert owner_client.get(f"/t/{acme.slug}/billing/").status_code == 200
    sql = " ".join(q["sql"] for q in captured.captured_queries)
    assert "billing_usageevent" not in sql and "billing_usagerollup" in sql


def test_without_stripe_keys_the_page_says_payments_are_not_configured(owner_client, acme, billed, settings):
    settings.STRIPE_SECRET_KEY = ""
    page = owner_client.get(f"/t/{acme.slug}/billing/").content.decode()
    assert "Payments are not configured" in page
    assert "Estimated charges" in page and 'id="bill-to-date">A$101.80<' in page
    assert 'id="plans-heading"' not in page and "Manage billing" not in page


def test_with_payments_configured_only_billing_managers_see_plan_choices(client, owner_client, acme, business,
                                                                          prices, member_of, settings):
    settings.STRIPE_SECRET_KEY = "sk_test_configured"
    page = owner_client.get(f"/t/{acme.slug}/billing/").content.decode()
    assert 'id="plans-heading"' in page and "Projected bill" in page and "Payments are not configured" not in page
    sign_in(client, member_of(acme, Role.ADMIN))
    page = client.get(f"/t/{acme.slug}/billing/").content.decode()
    assert 'id="plans-heading"' not in page  # admins see the bill; only owners and billing contacts change it


def test_past_due_page_explains_the_grace_period_and_the_402(owner_client, acme, business, prices, settings):
    settings.STRIPE_SECRET_KEY = "sk_test_configured"
    sub = subscribe(acme, business, start=timezone.now() - timedelta(days=3), status=Subscription.Status.PAST_DUE)
    sub.past_due_since = timezone.now() - timedelta(days=1)
    sub.save()
    page = owner_client.get(f"/t/{acme.slug}/billing/").content.decode()
    assert 'id="billing-state"' in page and "402" in page
    assert "Grace period ends" in page


def test_spend_is_shown_against_the_resolved_monthly_cap(owner_client, acme, billed):
    tenant_quota_set(tenant=acme, monthly_spend_cap_aud=Decimal("250.00"))
    page = owner_client.get(f"/t/{acme.slug}/billing/").content.decode()
    assert "of your A$250.00 monthly spend cap" in page


def test_invoices_are_listed_newest_first_in_keyset_pages(owner_client, acme, bluegum, billed):
    base = timezone.now() - timedelta(days=400)
    for i in range(15):
        Invoice.objects.create(tenant=acme, stripe_invoice_id=f"in_{i:03}", number=f"WTL-{i:04}", status="paid",
                               total_cents=10_890 + i, tax_cents=990, created=base + timedelta(days=20 * i),
                               hosted_invoice_url=f"https://invoice.stripe.example/{i}",
                               invoice_pdf=f"https://invoice.stripe.example/{i}.pdf")
    Invoice.objects.create(tenant=acme, stripe_invoice_id="in_draft", number="DRAFT-1", status="draft",
                           created=timezone.now())
    Invoice.objects.create(tenant=bluegum, stripe_invoice_id="in_bluegum", number="BLUEGUM-1", status="paid",
                           created=timezone.now())
    page = owner_client.get(f"/t/{acme.slug}/billing/").content.decode()
    numbers = re.findall(r"WTL-\d{4}", page)
    assert numbers == [f"WTL-{i:04}" for i in range(14, 2, -1)]  # the newest twelve
    assert "A$109.04" in page and "https://invoice.stripe.example/14.pdf" in page  # 10,904 cents incl. GST
    assert "DRAFT-1" not in page and "BLUEGUM-1" not in page
    older = re.search(r'href="\?before=([^"]+)">Older', page).group(1)
    page = owner_client.get(f"/t/{acme.slug}/billing/?before={older}").content.decode()
    assert re.findall(r"WTL-\d{4}", page) == ["WTL-0002", "WTL-0001", "WTL-0000"]
    assert "Older</a>" not in page
    # A cursor that is not one reads as the first page, never an error.
    assert owner_client.get(f"/t/{acme.slug}/billing/?before=%27%3Bdrop").status_code == 200


# --- who may see it --------------------------------------------------------------------------------
def test_anonymous_visitors_are_sent_to_sign_in(client, acme):
    for url in (f"/t/{acme.slug}/billing/", f"/t/{acme.slug}/billing/usage.csv?start=2026-11-01&end=2026-11-02"):
        response = client.get(url)
        assert response.status_code == 302 and "/accounts/login/" in response["Location"]


def test_another_tenants_billing_is_not_found(client, bob, bluegum, acme):
    sign_in(client, bob)
    assert client.get(f"/t/{acme.slug}/billing/").status_code == 404
    assert client.get(f"/t/{acme.slug}/billing/usage.csv?start=2026-11-01&end=2026-11-02").status_code == 404


@pytest.mark.parametrize(("role", "status"), [(Role.DEVELOPER, 403), (Role.AGENT, 403), (Role.BILLING, 200),
                                              (Role.ADMIN, 200)])
def test_billing_is_for_owners_admins_and_billing_contacts(client, acme, member_of, role, status):
    sign_in(client, member_of(acme, role))
    assert client.get(f"/t/{acme.slug}/billing/").status_code == status
    csv_status = client.get(f"/t/{acme.slug}/billing/usage.csv?start=2026-11-01&end=2026-11-02").status_code
    assert csv_status == status
    nav = client.get(f"/t/{acme.slug}/").content.decode()
    assert (f'href="/t/{acme.slug}/billing/"' in nav) == (status == 200)


# --- the CSV export --------------------------------------------------------------------------------
def _rows(response) -> list[list[str]]:
    return list(csv.reader(io.StringIO(response.content.decode())))


def test_csv_export_has_a_row_per_day_key_and_model_from_daily_rollups(owner_client, acme, bluegum, issue_key):
    key = keys.parse_key(issue_key(acme, name="IVR production"))[0]
    day1 = datetime(2026, 11, 2, tzinfo=SYDNEY)
    rollup(acme, day1, key=key, prompt=1_000, completion=500, cost_micro=5_000_000, requests=3, period="d")
    rollup(acme, day1, key=key, model="mistral-7b", prompt=10, completion=5, cost_micro=3, requests=1, period="d")
    rollup(acme, day1 + timedelta(days=1), key=key, prompt=7, completion=0, cost_micro=14, period="d")
    rollup(acme, day1 + timedelta(days=5), key=key, prompt=99, period="d")  # after the range
    rollup(acme, day1 + timedelta(hours=5), key=key, prompt=12_345)  # an hourly bucket: not in a daily export
    rollup(bluegum, day1, key="other", prompt=77_777, period="d")

    response = owner_client.get(f"/t/{acme.slug}/billing/usage.csv", {"start": "2026-11-02", "end": "2026-11-03"})
    assert response.status_code == 200
    assert response["Content-Type"].startswith("text/csv")
    assert response["Content-Disposition"] == (
        f'attachment; filename="wattle-usage-{acme.slug}-2026-11-02-2026-11-03.csv"')
    rows = _rows(response)
    assert rows[0] == ["day", "key_id", "key_name", "model", "requests", "errors", "input_tokens",
                       "output_tokens", "total_tokens", "cost_aud"]
    assert rows[1:] == [
        ["2026-11-02", key, "IVR production", "mistral-7b", "1", "0", "10", "5", "15", "0.000003"],
        ["2026-11-02", key, "IVR production", "mistral-large", "3", "0", "1000", "500", "1500", "5.000000"],
        ["2026-11-03", key, "IVR production", "mistral-large", "1", "0", "7", "0", "7", "0.000014"],
    ]


def test_csv_export_defuses_spreadsheet_formulas_in_names(owner_client, acme, issue_key):
    key = keys.parse_key(issue_key(acme, name='=HYPERLINK("http://evil.example","x")'))[0]
    rollup(acme, datetime(2026, 11, 2, tzinfo=SYDNEY), key=key, model="+cmd|' /C calc'!A0", prompt=1, period="d")
    rollup(acme, datetime(2026, 11, 2, tzinfo=SYDNEY), key=key, model="@SUM(1+1)", prompt=1, period="d")
    rows = _rows(owner_client.get(f"/t/{acme.slug}/billing/usage.csv", {"start": "2026-11-02", "end": "2026-11-02"}))
    names = {row[2] for row in rows[1:]}
    models = {row[3] for row in rows[1:]}
    assert names == {"'=HYPERLINK(\"http://evil.example\",\"x\")"}
    assert models == {"'+cmd|' /C calc'!A0", "'@SUM(1+1)"}
    assert not any(cell.startswith(("=", "+", "-", "@")) for row in rows for cell in row)


@pytest.mark.parametrize("query", [
    {"start": "2026-13-01", "end": "2026-12-31"},
    {"start": "yesterday", "end": "2026-12-31"},
    {"start": "2026-11-01"},
    {},
    {"start": "2026-12-01", "end": "2026-11-01"},
    {"start": "2025-01-01", "end": "2026-12-31"},
])
def test_a_malformed_export_range_is_a_clear_400(owner_client, acme, query):
    response = owner_client.get(f"/t/{acme.slug}/billing/usage.csv", query)
    assert response.status_code == 400
    page = response.content.decode()
    assert "Export usage" in page and 'role="alert"' in page
    assert "Content-Disposition" not in response


def test_a_years_export_is_allowed(owner_client, acme):
    response = owner_client.get(f"/t/{acme.slug}/billing/usage.csv", {"start": "2025-12-01", "end": "2026-11-30"})
    assert response.status_code == 200 and _rows(response) == [_rows(response)[0]]


# --- staff revenue ---------------------------------------------------------------------------------
def test_staff_revenue_sums_mrr_invoices_and_usage_per_tenant_and_plan(staff_client, acme, bluegum, business):
    now = timezone.now()
    this_month = datetime(now.astimezone(SYDNEY).year, now.astimezone(SYDNEY).month, 1, tzinfo=SYDNEY)
    subscribe(acme, business, start=now - timedelta(days=3))
    Subscription.objects.create(tenant=bluegum, plan=business, status=Subscription.Status.TRIALING,
                                current_period_start=now, current_period_end=now + timedelta(days=14))
    Invoice.objects.create(tenant=acme, stripe_invoice_id="in_this", status="paid", total_cents=10_890,
                           created=this_month + timedelta(hours=1))
    Invoice.objects.create(tenant=acme, stripe_invoice_id="in_last", status="paid", total_cents=5_000,
                           created=this_month - timedelta(days=3))
    Invoice.objects.create(tenant=acme, stripe_invoice_id="in_void", status="void", total_cents=99_999,
                           created=this_month + timedelta(hours=2))
    rollup(acme, this_month, cost_micro=12_340_000, period="d")
    rollup(bluegum, this_month, cost_micro=1_000_000, period="d")
    rollup(bluegum, this_month - timedelta(days=2), cost_micro=2_500_000, period="d")

    response = staff_client.get("/staff/revenue/")
    assert response.status_code == 200
    report = response.context["report"]
    lines = {line.label: line for line in report.tenants}
    assert lines["Acme Contact"].mrr == Decimal("99.00") and lines["Acme Contact"].subscribers == 1
    assert lines["Bluegum Calls"].mrr == 0 and lines["Bluegum Calls"].trialing == 1
    assert lines["Acme Contact"].invoiced_this_month == Decimal("108.90")
    assert lines["Acme Contact"].invoiced_last_month == Decimal("50.00")
    assert lines["Acme Contact"].usage_this_month == Decimal("12.34")
    assert lines["Bluegum Calls"].usage_last_month == Decimal("2.5")
    plan = next(line for line in report.plans if line.label == "Business")
    assert (plan.subscribers, plan.trialing, plan.mrr) == (1, 1, Decimal("99.00"))
    page = response.content.decode()
    assert 'id="total-mrr">A$99.00<' in page and 'id="total-usage">A$13.34<' in page
    assert 'aria-current="page">Revenue</a>' in page


def test_staff_revenue_is_for_staff_only(client, owner_client):
    assert owner_client.get("/staff/revenue/").status_code == 404
    response = client.get("/staff/revenue/")
    assert response.status_code == 302 and "/accounts/login/" in response["Location"]



# --- the usage page (billing's, at the console's address) ------------------------------------------
def test_usage_page_charts_and_cost_columns_add_up_to_the_daily_rollups(owner_client, acme, bluegum, prices,
                                                                        issue_key, django_assert_max_num_queries):
    key = keys.parse_key(issue_key(acme, name="IVR production"))[0]
    day = datetime(2026, 11, 2, tzinfo=SYDNEY)
    rollup(acme, day, key=key, prompt=1_000, completion=500, cost_micro=5_000_000, requests=3, period="d")
    rollup(acme, day + timedelta(days=1), key="playground", model="mistral-7b", prompt=10, completion=5,
           cost_micro=1_250_000, period="d")
    rollup(acme, day + timedelta(hours=3), key=key, prompt=12_345, cost_micro=1, period="h")  # hourly: not read
    rollup(bluegum, day, key="other", model="bluegum-only-model", prompt=77_777, period="d")

    with django_assert_max_num_queries(20) as captured:  # sign-in and session upkeep included
        response = owner_client.get(f"/t/{acme.slug}/usage/", {"since": "2026-11-01", "until": "2026-11-30"})
    assert response.status_code == 200
    sql = " ".join(q["sql"] for q in captured.captured_queries)
    assert "billing_usageevent" not in sql
    page = response.content.decode()
    assert 'id="usage-cost">A$6.25<' in page
    per_day = _chart(page, "Tokens per day")
    assert sum(_values(per_day, "input")) == 1_010 and sum(_values(per_day, "output")) == 505
    assert len(response.context["charts"].tokens_per_day.rows) == 30  # every day of the range, empty ones too
    assert sum(_values(_chart(page, "A$ per day"), "cost")) == Decimal("6.25")
    assert sorted(_values(_chart(page, "A$ per model"), "cost")) == [Decimal("1.25"), Decimal("5")]
    for text in (f"<code>wtl_{key}</code> IVR production</td><td>3</td><td>1,000</td><td>500</td><td>A$5.00</td>",
                 "<td>Playground</td><td>1</td><td>10</td><td>5</td><td>A$1.25</td>",
                 "<td>Mon 2 Nov 2026</td><td>3</td><td>1,000</td><td>500</td><td>A$5.00</td>"):
        assert text in page, text
    assert "12,345" not in page and "77,777" not in page and "bluegum-only-model" not in page


def test_usage_page_links_the_bill_only_for_roles_that_see_it(client, acme, member_of):
    sign_in(client, member_of(acme, Role.DEVELOPER))
    page = client.get(f"/t/{acme.slug}/usage/").content.decode()
    assert "No requests in this period." in page and f"/t/{acme.slug}/billing/" not in page
