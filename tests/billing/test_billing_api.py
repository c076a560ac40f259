"""``/api/v1/billing`` and ``/api/v1/billing/invoices``: the billing page's numbers for machines, under the
management API's door (management key scopes or a console session, the permission matrix, 404 across tenants)."""

from __future__ import annotations

from datetime import timedelta
from decimal import Decimal

import pytest
from django.utils import timezone

from billing.models import Invoice
from tenants.models import Role
from tests.conftest import sign_in

pytestmark = pytest.mark.django_db


def _auth(key: str) -> dict:
    return {"HTTP_AUTHORIZATION": f"Bearer {key}"}


def test_billing_endpoint_gives_plan_period_usage_bill_and_invoices(api_client, acme, bluegum, billed,
                                                                    management_key):
    Invoice.objects.create(tenant=acme, stripe_invoice_id="in_1", number="WTL-0001", status="paid",
                           subtotal_cents=9_900, tax_cents=990, total_cents=10_890, created=timezone.now(),
                           invoice_pdf="https://invoice.stripe.example/1.pdf")
    Invoice.objects.create(tenant=bluegum, stripe_invoice_id="in_2", number="BLUEGUM-1", status="paid",
                           created=timezone.now())
    response = api_client.get("/api/v1/billing", **_auth(management_key(acme, write=False)))
    assert response.status_code == 200
    body = response.json()
    assert body["plan"] == {"slug": "business", "name": "Business", "monthly_fee_aud": "99.00",
                            "included_tokens": 1_000_000, "trial_days": 14}
    assert body["subscription"]["status"] == "active"
    assert body["period"]["kind"] == "subscription"
    assert body["usage"]["prompt_tokens"] == 4_000_000 and body["usage"]["completion_tokens"] == 1_200_000
    assert body["usage"]["cost_aud"] == "11.040000"
    by_model = {row["model"]: row for row in body["usage"]["by_model"]}
    assert by_model["mistral-large"]["prompt_tokens"] == 2_000_000 and "bluegum-only-model" not in by_model
    bill = body["projected_bill"]
    assert bill["fee_aud"] == "99.00" and bill["to_date_aud"] == "101.80"
    assert Decimal(bill["projected_aud"]) > Decimal("101.80")
    large_in = next(line for line in bill["lines"] if line["model"] == "mistral-large" and line["direction"] == "input")
    assert (large_in["tokens"], large_in["included"], large_in["billable"], large_in["per_1m_aud"],
            large_in["to_date_aud"]) == (2_000_000, 1_000_000, 1_000_000, "2.000000", "2.000000")
    assert {"model": "mistral-large", "input_per_1m_aud": "2.000000", "output_per_1m_aud": "6.000000"} in body["prices"]
    assert [inv["number"] for inv in body["invoices"]] == ["WTL-0001"]
    assert body["invoices"][0]["total_cents"] == 10_890
    assert body["invoices"][0]["invoice_pdf"] == "https://invoice.stripe.example/1.pdf"


def test_invoices_list_pages_by_cursor_newest_first(api_client, acme, management_key):
    base = timezone.now() - timedelta(days=100)
    for i in range(5):
        Invoice.objects.create(tenant=acme, stripe_invoice_id=f"in_{i}", number=f"WTL-{i}", status="paid",
                               created=base + timedelta(days=i))
    auth = _auth(management_key(acme, write=False))
    first = api_client.get("/api/v1/billing/invoices?limit=2", **auth).json()
    assert [inv["id"] for inv in first["results"]] == ["in_4", "in_3"]
    second = api_client.get(first["next"], **auth).json()
    assert [inv["id"] for inv in second["results"]] == ["in_2", "in_1"]
    assert "offset" not in first["next"] and "cursor=" in first["next"]


def test_an_unauthenticated_call_is_a_401(api_client):
    response = api_client.get("/api/v1/billing")
    assert response.status_code == 401
    assert response.json()["error"]["code"] == "not_authenticated"


def test_an_inference_key_lacks_the_management_scope(api_client, acme, issue_key):
    response = api_client.get("/api/v1/billing", **_auth(issue_key(acme)))
    assert response.status_code == 403 and response.json()["error"]["code"] == "insufficient_scope"


@pytest.mark.parametrize(("role", "status"), [(Role.DEVELOPER, 403), (Role.AGENT, 403), (Role.BILLING, 200)])
def test_console_sessions_follow_the_matrix(api_client, acme, member_of, role, status):
    user = member_of(acme, role)
    sign_in(api_client, user)
    api_client.get(f"/t/{acme.slug}/")  # the console remembers the tenant, as the API's session callers do
    assert api_client.get("/api/v1/billing").status_code == status
    assert api_client.get("/api/v1/billing/invoices").status_code == status


def test_a_key_sees_only_its_own_tenants_billing(api_client, acme, bluegum, management_key):
    Invoice.objects.create(tenant=acme, stripe_invoice_id="in_acme", number="ACME-1", status="paid",
                           created=timezone.now())
    body = api_client.get("/api/v1/billing/invoices", **_auth(management_key(bluegum, write=False))).json()
    assert body["results"] == []
    assert api_client.get("/api/v1/billing", **_auth(management_key(bluegum, write=False))).json()["invoices"] == []


def test_a_malformed_cursor_is_a_clear_error(api_client, acme, management_key):
    response = api_client.get("/api/v1/billing/invoices?cursor=not-a-cursor",
                              **_auth(management_key(acme, write=False)))
    assert response.status_code == 404
    assert response.json()["error"]["message"]


def test_only_get_is_allowed(api_client, acme, management_key):
    assert api_client.post("/api/v1/billing", {}, format="json",
                           **_auth(management_key(acme))).status_code == 405
