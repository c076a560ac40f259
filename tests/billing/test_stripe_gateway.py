"""The Stripe gateway against the Stripe stand-in, through the real SDK over HTTP.

Each test drives billing/stripe_gateway.py as its callers will, and checks what reached "Stripe" (the stand-in's
request log and state) and what came back. The stand-in itself is checked where its answer stands in for a fact
about Stripe: the duplicate-identifier refusal, the error shapes, the webhook signature scheme.
"""

from __future__ import annotations

import http.client
import json
import time
import urllib.parse
from decimal import Decimal
from pathlib import Path

import pytest
import stripe

from billing import stripe_gateway as gateway
from billing.stripe_gateway import StripeNotConfigured, StripeRefused, StripeUnavailable, WebhookSignatureInvalid
from tests.fakes.stripe.forms import decode

REPO = Path(__file__).resolve().parents[2]
ABN = "51 824 753 556"


@pytest.fixture(autouse=True)
def _no_sdk_retries(settings):
    """Most tests want one attempt per call (the SDK's back-off sleeps half a second); retry tests raise it."""
    settings.STRIPE_MAX_RETRIES = 0
    settings.STRIPE_TIMEOUT_S = 5


def _http(method: str, url: str, form: dict | None = None, headers: dict | None = None):
    """One HTTP request without following redirects: (status, headers, body)."""
    parts = urllib.parse.urlsplit(url)
    conn = http.client.HTTPConnection(parts.hostname, parts.port, timeout=5)
    body = urllib.parse.urlencode(form or {}) if form is not None else None
    hdrs = {"Content-Type": "application/x-www-form-urlencoded", **(headers or {})}
    conn.request(method, parts.path + (f"?{parts.query}" if parts.query else ""), body=body, headers=hdrs)
    response = conn.getresponse()
    result = response.status, {k.lower(): v for k, v in response.getheaders()}, response.read()
    conn.close()
    return result


def _customer(**kwargs) -> str:
    args = {"tenant_id": "t-acme", "name": "Acme Pty Ltd", "email": "billing@acme.test", "idempotency_key": "cus-acme"}
    return gateway.customer_create(**{**args, **kwargs})


def _catalogue(*, included: int = 1000, unit_cents: str = "0.5"):
    product = gateway.product_upsert(product_id=None, name="Developer", metadata={"plan": "developer"})
    meter = gateway.meter_upsert(event_name="wattle_input_tokens", display_name="Input tokens")
    fee = gateway.price_create_fee(product_id=product, unit_amount_cents=4900, lookup_key="dev-fee", nickname="fee")
    metered = gateway.price_create_metered(
        product_id=product,
        meter_id=meter,
        per_token_cents=Decimal(unit_cents),
        included_tokens=included,
        lookup_key="dev-input",
        nickname="input tokens",
    )
    return product, meter, fee, metered


def _checkout(customer: str, fee: str | None, metered: list[str], **kwargs) -> tuple[str, str]:
    args = {
        "trial_days": 0,
        "card_required": True,
        "success_url": "http://portal.test/billing/return?session={CHECKOUT_SESSION_ID}",
        "cancel_url": "http://portal.test/billing/plans",
        "client_reference_id": "t-acme",
        "idempotency_key": "checkout-1",
    }
    return gateway.checkout_session_create(
        customer_id=customer, fee_price_id=fee, metered_price_ids=metered, **{**args, **kwargs}
    )


def _subscribed(fake, **kwargs):
    customer = _customer()
    _product, meter, fee, metered = _catalogue()
    session_id, url = _checkout(customer, fee, [metered], **kwargs)
    status, _, _ = _http("POST", url, {"business_name": "Acme Pty Ltd", "abn": ""})
    assert status == 303
    sub_id = gateway.checkout_session_retrieve(session_id)["subscription"]
    return customer, meter, fee, metered, sub_id


def _last_request(fake, path: str) -> dict:
    return [r for r in fake.requests if r["path"] == path][-1]


# --- configuration --------------------------------------------------------------------------------------------------
def test_without_a_secret_key_payments_are_not_configured(settings):
    settings.STRIPE_SECRET_KEY = ""
    gateway.reset_client()
    assert gateway.configured() is False
    with pytest.raises(StripeNotConfigured):
        _customer()


def test_the_client_is_rebuilt_when_the_settings_change(stripe_fake, settings):
    first = gateway._client()
    assert gateway._client() is first
    settings.STRIPE_TIMEOUT_S = 1
    assert gateway._client() is not first
    gateway.reset_client()
    assert gateway._client() is not first


def test_only_the_gateway_imports_the_stripe_sdk():
    offenders = []
    for path in REPO.rglob("*.py"):
        rel = path.relative_to(REPO).as_posix()
        if rel.startswith((".venv/", "tests/", "var/")) or rel == "billing/stripe_gateway.py":
            continue
        for line in path.read_text(errors="replace").splitlines():
            stripped = line.strip()
            if stripped.startswith(("import stripe", "from stripe")):
                offenders.append(rel)
    assert offenders == []


# --- customers ------------------------------------------------------------------------------------------------------
def test_customer_create_sends_only_the_allow_listed_fields(stripe_fake):
    customer = _customer(abn=ABN)

    assert customer.startswith("cus_")
    sent = _last_request(stripe_fake, "/v1/customers")["params"]
    assert set(sent) == {"name", "email", "metadata", "tax_id_data"}
    assert sent["metadata"] == {"tenant_id": "t-acme"}
    assert sent["tax_id_data"] == [{"type": "au_abn", "value": "51824753556"}]
    assert gateway.customer_tax_ids(customer)[0] | {"id": None} == {
        "id": None,
        "type": "au_abn",
        "value": "51824753556",
        "verification": "verified",
    }
    assert [e["type"] for e in stripe_fake.events] == ["customer.created", "customer.tax_id.created"]


def test_customer_create_with_the_same_idempotency_key_makes_one_customer(stripe_fake):
    first = _customer()
    again = _customer()

    assert again == first
    assert len(stripe_fake.state.customers) == 1


def test_reusing_an_idempotency_key_for_different_parameters_is_refused(stripe_fake):
    _customer()
    with pytest.raises(StripeRefused) as caught:
        _customer(name="Someone Else")
    assert caught.value.status == 400


def test_a_malformed_abn_is_refused_before_anything_is_sent(stripe_fake):
    with pytest.raises(StripeRefused) as caught:
        _customer(abn="1234")
    assert caught.value.code == "tax_id_invalid"
    assert stripe_fake.requests == []


def test_customer_update_changes_name_and_email(stripe_fake):
    customer = _customer()
    gateway.customer_update(customer_id=customer, name="Acme Holdings", email="accounts@acme.test")

    stored = stripe_fake.state.customers[customer]
    assert (stored["name"], stored["email"]) == ("Acme Holdings", "accounts@acme.test")


def test_an_unknown_customer_is_a_refusal_with_a_safe_message(stripe_fake):
    with pytest.raises(StripeRefused) as caught:
        gateway.customer_update(customer_id="cus_missing", name="x", email="x@example.test")
    refusal = caught.value
    assert (refusal.status, refusal.code) == (404, "resource_missing")
    assert refusal.user_message == "That billing record was not found at Stripe."
    assert "cus_missing" in refusal.stripe_message
    assert "x@example.test" not in str(refusal)


def test_an_invalid_email_is_refused_without_echoing_it_in_the_error_text(stripe_fake):
    with pytest.raises(StripeRefused) as caught:
        _customer(email="not-an-email")
    assert caught.value.code == "email_invalid"
    assert "not-an-email" not in str(caught.value)


# --- catalogue ------------------------------------------------------------------------------------------------------
def test_product_upsert_creates_then_updates_the_same_product(stripe_fake):
    product = gateway.product_upsert(product_id=None, name="Developer", metadata={"plan": "developer"})
    same = gateway.product_upsert(product_id=product, name="Developer (2026)", metadata={"plan": "developer"})

    assert same == product and product.startswith("prod_")
    assert stripe_fake.state.products[product]["name"] == "Developer (2026)"


def test_meter_upsert_finds_the_meter_by_event_name(stripe_fake):
    meter = gateway.meter_upsert(event_name="wattle_input_tokens", display_name="Input tokens")
    again = gateway.meter_upsert(event_name="wattle_input_tokens", display_name="Input tokens")

    assert again == meter and meter.startswith("mtr_")
    stored = stripe_fake.state.meters[meter]
    assert stored["default_aggregation"] == {"formula": "sum"}
    assert stored["customer_mapping"]["event_payload_key"] == "stripe_customer_id"
    assert stored["value_settings"] == {"event_payload_key": "value"}
    assert len(stripe_fake.state.meters) == 1


def test_fee_price_is_monthly_aud_tax_exclusive_and_takes_over_its_lookup_key(stripe_fake):
    product = gateway.product_upsert(product_id=None, name="Developer", metadata={})
    old = gateway.price_create_fee(product_id=product, unit_amount_cents=4900, lookup_key="dev-fee", nickname="fee")
    new = gateway.price_create_fee(product_id=product, unit_amount_cents=5900, lookup_key="dev-fee", nickname="fee")

    price = stripe_fake.state.prices[new]
    assert (price["currency"], price["unit_amount"], price["tax_behavior"]) == ("aud", 5900, "exclusive")
    assert price["recurring"]["interval"] == "month" and price["recurring"]["usage_type"] == "licensed"
    assert gateway.price_by_lookup_key("dev-fee")["id"] == new
    assert stripe_fake.state.prices[old]["lookup_key"] is None

    gateway.price_deactivate(new)
    assert stripe_fake.state.prices[new]["active"] is False
    assert gateway.price_by_lookup_key("dev-fee") is None


def test_metered_price_with_included_tokens_is_graduated_tiers(stripe_fake):
    _product, meter, _fee, _metered = _catalogue(included=1_000_000, unit_cents="0.00015")

    sent = [r for r in stripe_fake.requests if r["path"] == "/v1/prices"][-1]["params"]
    assert sent["billing_scheme"] == "tiered" and sent["tiers_mode"] == "graduated"
    assert sent["tiers"] == [
        {"up_to": "1000000", "unit_amount": "0"},
        {"up_to": "inf", "unit_amount_decimal": "0.00015"},
    ]
    assert sent["recurring"] == {"interval": "month", "usage_type": "metered", "meter": meter}
    assert sent["tax_behavior"] == "exclusive"
    assert gateway.price_by_lookup_key("dev-input")["meter"] == meter


def test_metered_price_without_included_tokens_is_per_unit_in_plain_decimals(stripe_fake):
    product = gateway.product_upsert(product_id=None, name="Developer", metadata={})
    meter = gateway.meter_upsert(event_name="wattle_output_tokens", display_name="Output tokens")
    gateway.price_create_metered(
        product_id=product,
        meter_id=meter,
        per_token_cents=Decimal("1E-7"),
        included_tokens=0,
        lookup_key="dev-output",
        nickname="output",
    )

    sent = _last_request(stripe_fake, "/v1/prices")["params"]
    assert sent["billing_scheme"] == "per_unit" and sent["unit_amount_decimal"] == "0.0000001"
    with pytest.raises(ValueError, match="12 decimal places"):
        gateway.price_create_metered(
            product_id=product,
            meter_id=meter,
            per_token_cents=Decimal("0.0000000000001"),
            included_tokens=0,
            lookup_key="too-fine",
            nickname="x",
        )


def test_a_price_for_a_missing_product_is_refused(stripe_fake):
    with pytest.raises(StripeRefused) as caught:
        gateway.price_create_fee(product_id="prod_missing", unit_amount_cents=100, lookup_key="k", nickname="n")
    assert (caught.value.status, caught.value.param) == (400, "product")


# --- Checkout, subscriptions, invoices ------------------------------------------------------------------------------
def test_checkout_session_asks_for_tax_abn_and_address_in_aud(stripe_fake):
    customer = _customer()
    _product, _meter, fee, metered = _catalogue()
    session_id, url = _checkout(customer, fee, [metered])

    assert session_id.startswith("cs_test_") and url == f"{stripe_fake.base_url}/checkout/{session_id}"
    sent = _last_request(stripe_fake, "/v1/checkout/sessions")["params"]
    assert sent["mode"] == "subscription" and sent["currency"] == "aud"
    assert sent["automatic_tax"] == {"enabled": "true"}
    assert sent["tax_id_collection"] == {"enabled": "true"}
    assert sent["customer_update"] == {"name": "auto", "address": "auto"}
    assert sent["billing_address_collection"] == "required"
    assert sent["line_items"] == [{"price": fee, "quantity": "1"}, {"price": metered}]
    assert sent["client_reference_id"] == "t-acme"
    assert "payment_method_collection" not in sent and "trial_period_days" not in sent["subscription_data"]
    assert gateway.checkout_session_retrieve(session_id)["status"] == "open"
    # The same idempotency key gives the same session.
    assert _checkout(customer, fee, [metered]) == (session_id, url)


def test_paying_on_the_checkout_page_starts_an_active_subscription_with_a_paid_invoice(stripe_fake):
    customer = _customer()
    _product, _meter, fee, metered = _catalogue()
    session_id, url = _checkout(customer, fee, [metered])

    status, _, page = _http("GET", url)
    assert status == 200 and b"Pay and subscribe" in page and b"Developer" in page
    status, headers, _ = _http("POST", url, {"business_name": "Acme Pty Ltd", "abn": ABN})
    assert status == 303
    assert headers["location"] == f"http://portal.test/billing/return?session={session_id}"

    session = gateway.checkout_session_retrieve(session_id)
    assert (session["status"], session["payment_status"], session["customer"]) == ("complete", "paid", customer)
    sub = gateway.subscription_retrieve(session["subscription"])
    assert sub["status"] == "active" and sub["customer"] == customer
    assert isinstance(sub["current_period_start"], int) and sub["current_period_end"] > sub["current_period_start"]
    assert [item["price"] for item in sub["items"]] == [fee, metered]
    assert sub["metadata"] == {"client_reference_id": "t-acme"}
    [invoice] = gateway.invoices_list(customer_id=customer)
    assert (invoice["status"], invoice["subtotal"], invoice["tax"], invoice["total"]) == ("paid", 4900, 490, 5390)
    assert invoice["id"] == sub["latest_invoice"] and invoice["currency"] == "aud"
    types = [e["type"] for e in stripe_fake.events]
    for expected in ("customer.subscription.created", "invoice.paid", "checkout.session.completed"):
        assert expected in types
    assert types.index("customer.subscription.created") < types.index("checkout.session.completed")
    assert gateway.customer_tax_ids(customer)[0]["value"] == "51824753556"


def test_cancel_on_the_checkout_page_goes_back_to_the_cancel_url(stripe_fake):
    customer = _customer()
    _product, _meter, fee, metered = _catalogue()
    _session_id, url = _checkout(customer, fee, [metered])

    _, _, page = _http("GET", url)
    assert b'href="http://portal.test/billing/plans">Cancel' in page


def test_a_declined_card_at_checkout_leaves_the_session_open(stripe_fake):
    customer = _customer()
    _product, _meter, fee, metered = _catalogue()
    session_id, url = _checkout(customer, fee, [metered])
    stripe_fake.set_card_declines(customer)

    status, _, page = _http("POST", url, {"business_name": "Acme"})
    assert status == 402 and b"Your card was declined." in page
    assert gateway.checkout_session_retrieve(session_id)["status"] == "open"


def test_a_trial_without_a_card_asks_for_none_and_cancels_at_its_end(stripe_fake):
    customer = _customer()
    _product, _meter, fee, metered = _catalogue()
    session_id, url = _checkout(customer, fee, [metered], trial_days=14, card_required=False)

    sent = _last_request(stripe_fake, "/v1/checkout/sessions")["params"]
    assert sent["payment_method_collection"] == "if_required"
    assert sent["subscription_data"]["trial_period_days"] == "14"
    assert sent["subscription_data"]["trial_settings"] == {"end_behavior": {"missing_payment_method": "cancel"}}
    _, _, page = _http("GET", url)
    assert b"Start trial" in page and b"no card needed" in page and b'name="card"' not in page

    _http("POST", url, {"business_name": "Acme"})
    session = gateway.checkout_session_retrieve(session_id)
    assert session["payment_status"] == "no_payment_required"
    sub = gateway.subscription_retrieve(session["subscription"])
    assert sub["status"] == "trialing" and sub["trial_end"] == sub["current_period_end"]

    stripe_fake.end_trial(sub["id"])
    assert gateway.subscription_retrieve(sub["id"])["status"] == "canceled"
    assert stripe_fake.events[-1]["type"] == "customer.subscription.deleted"


def test_a_trial_with_a_card_becomes_active_and_invoices_the_fee(stripe_fake):
    _customer_id, _meter, _fee, _metered, sub_id = _subscribed(stripe_fake, trial_days=7, card_required=True)
    assert gateway.subscription_retrieve(sub_id)["status"] == "trialing"

    invoice = stripe_fake.end_trial(sub_id)
    assert gateway.subscription_retrieve(sub_id)["status"] == "active"
    assert gateway.invoice_retrieve(invoice["id"])["total"] == 5390


def test_a_subscription_with_more_items_than_one_page_lists_them_all(stripe_fake):
    customer = _customer()
    product, meter, fee, _metered = _catalogue()
    metered = [
        gateway.price_create_metered(
            product_id=product,
            meter_id=meter,
            per_token_cents=Decimal("0.001"),
            included_tokens=0,
            lookup_key=f"model-{i}",
            nickname=f"model {i}",
        )
        for i in range(11)
    ]
    session_id, _url = _checkout(customer, fee, metered)
    sub = stripe_fake.complete_checkout(session_id)

    items = gateway.subscription_retrieve(sub["id"])["items"]
    assert [item["price"] for item in items] == [fee, *metered]
    assert _last_request(stripe_fake, "/v1/subscription_items")["params"]["subscription"] == sub["id"]


def test_the_next_period_invoices_metered_usage_through_the_tiers(stripe_fake):
    customer, meter, fee, metered, sub_id = _subscribed(stripe_fake)
    now = int(time.time())
    gateway.meter_event_create(
        event_name="wattle_input_tokens", customer_id=customer, value=1800, timestamp=now, identifier="h1"
    )
    gateway.meter_event_create(
        event_name="wattle_input_tokens", customer_id=customer, value=1200, timestamp=now, identifier="h2"
    )

    invoice = gateway.invoice_retrieve(stripe_fake.advance(sub_id)["id"])

    usage = next(line for line in invoice["lines"] if line["price"] == metered)
    fee_line = next(line for line in invoice["lines"] if line["price"] == fee)
    # 3000 tokens, the first 1000 free, then 0.5 cents each: 1000 cents.
    assert (usage["meter"], usage["quantity"], usage["amount"]) == (meter, 3000, 1000)
    assert (fee_line["meter"], fee_line["quantity"], fee_line["amount"]) == (None, 1, 4900)
    assert (invoice["subtotal"], invoice["tax"], invoice["total"], invoice["status"]) == (5900, 590, 6490, "paid")
    assert stripe_fake.events[-1]["type"] == "invoice.paid"


def test_a_declined_renewal_is_past_due_until_the_invoice_is_paid(stripe_fake):
    customer, _meter, _fee, _metered, sub_id = _subscribed(stripe_fake)
    stripe_fake.set_card_declines(customer)

    invoice = stripe_fake.advance(sub_id)
    assert gateway.subscription_retrieve(sub_id)["status"] == "past_due"
    assert gateway.invoices_list(customer_id=customer)[0]["status"] == "open"
    assert "invoice.payment_failed" in [e["type"] for e in stripe_fake.events]

    status, _, _ = _http("POST", f"{stripe_fake.base_url}/_fake/invoices/{invoice['id']}/pay", {})
    assert status == 200
    assert gateway.subscription_retrieve(sub_id)["status"] == "active"
    assert [e["type"] for e in stripe_fake.events][-2:] == ["invoice.paid", "customer.subscription.updated"]


def test_the_invoice_pages_are_a_tax_invoice_and_a_valid_pdf(stripe_fake):
    customer, *_ = _subscribed(stripe_fake)
    [invoice] = gateway.invoices_list(customer_id=customer)

    status, _, page = _http("GET", invoice["hosted_invoice_url"])
    assert status == 200 and b"Tax invoice" in page and b"GST" in page
    status, headers, pdf = _http("GET", invoice["invoice_pdf"])
    assert status == 200 and headers["content-type"] == "application/pdf"
    assert pdf.startswith(b"%PDF-1.4") and pdf.rstrip().endswith(b"%%EOF")
    xref_at = int(pdf.rsplit(b"startxref", 1)[1].split()[0])
    assert pdf[xref_at:].startswith(b"xref")
    assert b"Tax invoice" in pdf and b"A$53.90" in pdf


def test_the_portal_cancels_at_the_period_end_and_returns(stripe_fake):
    customer, _meter, _fee, _metered, sub_id = _subscribed(stripe_fake)
    url = gateway.portal_session_create(customer_id=customer, return_url="http://portal.test/billing")

    assert url.startswith(f"{stripe_fake.base_url}/portal/bps_")
    _, _, page = _http("GET", url)
    assert b"Cancel subscription" in page and b'href="http://portal.test/billing">Return' in page
    status, _, _ = _http("POST", f"{url}/cancel", {"subscription": sub_id})
    assert status == 303

    sub = gateway.subscription_retrieve(sub_id)
    assert sub["cancel_at_period_end"] is True and sub["status"] == "active"
    event = stripe_fake.events[-1]
    assert event["type"] == "customer.subscription.updated"
    assert event["data"]["previous_attributes"]["cancel_at_period_end"] is False

    stripe_fake.advance(sub_id)
    assert gateway.subscription_retrieve(sub_id)["status"] == "canceled"
    assert stripe_fake.events[-1]["type"] == "customer.subscription.deleted"


def test_an_unknown_subscription_is_a_404_refusal(stripe_fake):
    with pytest.raises(StripeRefused) as caught:
        gateway.subscription_retrieve("sub_missing")
    assert (caught.value.status, caught.value.code) == (404, "resource_missing")


def test_tax_id_changes_are_events(stripe_fake):
    customer = _customer()
    stripe_fake.set_tax_id(customer, ABN)
    stripe_fake.set_tax_id(customer, "53 004 085 616")

    assert [e["type"] for e in stripe_fake.events][-2:] == ["customer.tax_id.created", "customer.tax_id.updated"]
    assert gateway.customer_tax_ids(customer)[0]["value"] == "53004085616"


# --- meter events ---------------------------------------------------------------------------------------------------
def test_a_meter_event_sent_twice_is_held_once_and_both_sends_are_acknowledged(stripe_fake):
    customer = _customer()
    gateway.meter_upsert(event_name="wattle_input_tokens", display_name="Input tokens")
    hour = int(time.time()) // 3600 * 3600
    for _ in range(2):
        gateway.meter_event_create(
            event_name="wattle_input_tokens", customer_id=customer, value=250, timestamp=hour, identifier="acme:in:h"
        )

    assert stripe_fake.meter_totals() == {(customer, "wattle_input_tokens", hour): 250}
    sent = [r for r in stripe_fake.requests if r["path"] == "/v1/billing/meter_events"]
    assert len(sent) == 2 and sent[0]["params"]["payload"] == {"stripe_customer_id": customer, "value": "250"}


def test_the_stand_in_answers_a_duplicate_identifier_as_stripe_does(stripe_fake):
    """Stripe refuses a reused identifier with a 400 invalid_request_error and tells the SDK not to retry it."""
    customer = _customer()
    gateway.meter_upsert(event_name="wattle_input_tokens", display_name="Input tokens")
    form = {
        "event_name": "wattle_input_tokens",
        "identifier": "dup-1",
        "payload[stripe_customer_id]": customer,
        "payload[value]": "5",
    }
    auth = {"Authorization": f"Bearer {stripe_fake.api_key}"}
    assert _http("POST", stripe_fake.url("/v1/billing/meter_events"), form, auth)[0] == 200
    status, headers, body = _http("POST", stripe_fake.url("/v1/billing/meter_events"), form, auth)

    assert status == 400 and headers["stripe-should-retry"] == "false"
    assert json.loads(body) == {
        "error": {"type": "invalid_request_error", "message": "An event already exists with identifier dup-1."}
    }


def test_a_meter_event_older_than_35_days_is_refused(stripe_fake):
    customer = _customer()
    gateway.meter_upsert(event_name="wattle_input_tokens", display_name="Input tokens")
    with pytest.raises(StripeRefused) as caught:
        gateway.meter_event_create(
            event_name="wattle_input_tokens",
            customer_id=customer,
            value=1,
            timestamp=int(time.time()) - 36 * 86400,
            identifier="old",
        )
    assert (caught.value.status, caught.value.param) == (400, "timestamp")


def test_a_meter_event_value_is_a_whole_number(stripe_fake):
    customer = _customer()
    gateway.meter_upsert(event_name="wattle_input_tokens", display_name="Input tokens")
    with pytest.raises(TypeError):
        gateway.meter_event_create(
            event_name="wattle_input_tokens", customer_id=customer, value=1.5, timestamp=0, identifier="x"
        )
    form = {"event_name": "wattle_input_tokens", "payload[stripe_customer_id]": customer, "payload[value]": "1.5"}
    status, _, body = _http(
        "POST", stripe_fake.url("/v1/billing/meter_events"), form, {"Authorization": f"Bearer {stripe_fake.api_key}"}
    )
    assert status == 400 and json.loads(body)["error"]["param"] == "payload[value]"


def test_meter_event_summaries_are_hourly_windows_in_time_order(stripe_fake):
    customer = _customer()
    meter = gateway.meter_upsert(event_name="wattle_input_tokens", display_name="Input tokens")
    hour = int(time.time()) // 3600 * 3600 - 3 * 3600
    for i, (offset, value) in enumerate([(7200 + 5, 40), (10, 100), (3599, 20), (7200, 2)]):
        gateway.meter_event_create(
            event_name="wattle_input_tokens",
            customer_id=customer,
            value=value,
            timestamp=hour + offset,
            identifier=f"e{i}",
        )

    rows = gateway.meter_event_summaries(meter_id=meter, customer_id=customer, start=hour, end=hour + 3 * 3600)
    assert rows == [(hour, hour + 3600, 120.0), (hour + 7200, hour + 10800, 42.0)]
    sent = _last_request(stripe_fake, f"/v1/billing/meters/{meter}/event_summaries")["params"]
    assert sent["value_grouping_window"] == "hour"
    with pytest.raises(ValueError, match="hour boundaries"):
        gateway.meter_event_summaries(meter_id=meter, customer_id=customer, start=hour + 1, end=hour + 3600)


# --- Stripe down, slow or refusing ----------------------------------------------------------------------------------
@pytest.mark.parametrize("status", [500, 503, 429, 409])
def test_a_5xx_a_rate_limit_or_a_conflict_is_unavailable(stripe_fake, status):
    stripe_fake.fail_next("/v1/customers", status=status)
    with pytest.raises(StripeUnavailable):
        _customer()
    assert stripe_fake.state.customers == {}


def test_the_sdk_retries_a_500_with_the_same_idempotency_key(stripe_fake, settings):
    settings.STRIPE_MAX_RETRIES = 1
    stripe_fake.fail_next("/v1/billing/meter_events")
    customer = _customer()
    gateway.meter_upsert(event_name="wattle_input_tokens", display_name="Input tokens")

    gateway.meter_event_create(
        event_name="wattle_input_tokens", customer_id=customer, value=7, timestamp=int(time.time()), identifier="r1"
    )
    assert sum(stripe_fake.meter_totals().values()) == 7


def test_a_hang_is_unavailable_within_the_timeout_and_the_resend_is_not_counted_twice(stripe_fake, settings):
    settings.STRIPE_TIMEOUT_S = 0.3
    customer = _customer()
    gateway.meter_upsert(event_name="wattle_input_tokens", display_name="Input tokens")
    now = int(time.time())
    args = {"event_name": "wattle_input_tokens", "customer_id": customer, "value": 9, "timestamp": now}
    # Stripe takes the event but the answer never arrives in time.
    stripe_fake.hang_next("/v1/billing/meter_events", seconds=1.0, then="process")

    started = time.monotonic()
    with pytest.raises(StripeUnavailable):
        gateway.meter_event_create(**args, identifier="slow-1")
    assert time.monotonic() - started < 0.9

    def held() -> int:
        return sum(stripe_fake.meter_totals().values())

    deadline = time.monotonic() + 5
    while held() == 0 and time.monotonic() < deadline:
        time.sleep(0.02)
    gateway.meter_event_create(**args, identifier="slow-1")  # the outbox sends it again
    assert held() == 9


def test_a_dropped_connection_is_unavailable(stripe_fake, settings):
    settings.STRIPE_TIMEOUT_S = 2
    stripe_fake.hang_next("/v1/subscriptions", seconds=0, then="drop")
    with pytest.raises(StripeUnavailable):
        gateway.subscription_retrieve("sub_x")


def test_a_customer_create_retried_after_a_timeout_is_one_customer(stripe_fake, settings):
    settings.STRIPE_TIMEOUT_S = 0.3
    settings.STRIPE_MAX_RETRIES = 1
    stripe_fake.hang_next("/v1/customers", seconds=1.5, then="process")

    customer = _customer()

    deadline = time.monotonic() + 5
    while len([r for r in stripe_fake.requests if r["path"] == "/v1/customers"]) < 2 and time.monotonic() < deadline:
        time.sleep(0.02)
    keys = {r["idempotency_key"] for r in stripe_fake.requests if r["path"] == "/v1/customers"}
    assert keys == {"cus-acme"}
    assert list(stripe_fake.state.customers) == [customer]


def test_a_wrong_api_key_is_a_refusal_that_names_no_key(stripe_fake, settings):
    settings.STRIPE_SECRET_KEY = "sk_test_wrong_key_123"
    with pytest.raises(StripeRefused) as caught:
        _customer()
    assert caught.value.status == 401
    assert "wrong_key" not in caught.value.user_message


def test_the_stand_in_wants_a_bearer_key(stripe_fake):
    status, _, body = _http("GET", stripe_fake.url("/v1/customers/cus_x"))
    assert status == 401 and json.loads(body)["error"]["type"] == "invalid_request_error"
    status, _, body = _http(
        "GET", stripe_fake.url("/v1/nothing"), headers={"Authorization": "Bearer " + stripe_fake.api_key}
    )
    assert status == 404 and "Unrecognized request URL" in json.loads(body)["error"]["message"]


# --- webhooks -------------------------------------------------------------------------------------------------------
def _an_event(fake) -> dict:
    _customer()
    return fake.events[0]


def test_a_signed_event_is_verified_and_parsed(stripe_fake):
    event = _an_event(stripe_fake)
    payload, header = stripe_fake.signed(event)

    parsed = gateway.webhook_event(payload, header)
    assert parsed["id"] == event["id"] and parsed["type"] == "customer.created"
    assert parsed["data"]["object"]["object"] == "customer"


def test_the_stand_in_signs_exactly_as_stripe_does(stripe_fake):
    event = _an_event(stripe_fake)
    payload, header = stripe_fake.signed(event, timestamp=1_700_000_000)

    expected = stripe.WebhookSignature.generate_signature_header(
        payload.decode(), stripe_fake.webhook_secret, timestamp=1_700_000_000
    )
    assert header == expected


@pytest.mark.parametrize(
    "forge",
    [
        pytest.param(lambda fake, event: fake.signed(event, secret="whsec_someone_else"), id="forged"),
        pytest.param(lambda fake, event: fake.signed(event, timestamp=int(time.time()) - 301), id="stale"),
        pytest.param(lambda fake, event: (fake.signed(event)[0], ""), id="unsigned"),
        pytest.param(lambda fake, event: (fake.signed(event)[0], "garbage"), id="malformed-header"),
        pytest.param(lambda fake, event: (fake.signed(event)[0], "t=abc,v1=00"), id="malformed-timestamp"),
        pytest.param(lambda fake, event: (fake.signed(event)[0] + b" ", fake.signed(event)[1]), id="body-changed"),
    ],
)
def test_a_webhook_that_stripe_did_not_sign_just_now_is_refused(stripe_fake, forge):
    payload, header = forge(stripe_fake, _an_event(stripe_fake))
    with pytest.raises(WebhookSignatureInvalid):
        gateway.webhook_event(payload, header)


def test_a_signed_body_that_is_not_an_event_is_refused(stripe_fake):
    from tests.fakes.stripe import sign

    for body in (b"not json", b"[1, 2]", b"\xff\xfe"):
        with pytest.raises(WebhookSignatureInvalid):
            gateway.webhook_event(body, sign(body, stripe_fake.webhook_secret))


def test_webhooks_are_refused_without_a_webhook_secret(stripe_fake, settings):
    payload, header = stripe_fake.signed(_an_event(stripe_fake))
    settings.STRIPE_WEBHOOK_SECRET = ""
    with pytest.raises(WebhookSignatureInvalid):
        gateway.webhook_event(payload, header)


# --- the stand-in's own plumbing --------------------------------------------------------------------------------------
def test_stripe_form_encoding_decodes_to_nested_parameters():
    assert decode("a[b][0][c]=x&a[b][1][c]=y&expand[]=tiers&m[k]=&n=1") == {
        "a": {"b": [{"c": "x"}, {"c": "y"}]},
        "expand": ["tiers"],
        "m": {"k": ""},
        "n": "1",
    }


def test_control_endpoints_drive_the_subscription_and_faults(stripe_fake):
    _customer_id, _meter, _fee, _metered, sub_id = _subscribed(stripe_fake)

    status, _, body = _http("POST", stripe_fake.url(f"/_fake/subscriptions/{sub_id}/advance"), {})
    assert status == 200 and json.loads(body)["object"] == "invoice"
    _http("POST", stripe_fake.url("/_fake/faults"), {"path_prefix": "/v1/subscriptions", "count": "1"})
    with pytest.raises(StripeUnavailable):
        gateway.subscription_retrieve(sub_id)
    assert gateway.subscription_retrieve(sub_id)["id"] == sub_id
    status, _, body = _http("GET", stripe_fake.url("/_fake/events"))
    assert [e["type"] for e in json.loads(body)] == [e["type"] for e in stripe_fake.events]


def test_events_are_posted_signed_to_a_webhook_url(stripe_fake):
    received: list[tuple[bytes, str]] = []
    import threading
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

    class Receiver(BaseHTTPRequestHandler):
        def do_POST(self):
            body = self.rfile.read(int(self.headers["Content-Length"]))
            received.append((body, self.headers["Stripe-Signature"]))
            self.send_response(200)
            self.end_headers()

        def log_message(self, *args):
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Receiver)
    threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()
    try:
        stripe_fake.webhook_url = f"http://127.0.0.1:{server.server_address[1]}/billing/stripe/webhook/"
        _customer(abn=ABN)
        stripe_fake.wait_for_deliveries()
    finally:
        server.shutdown()
        server.server_close()
    assert [gateway.webhook_event(body, header)["type"] for body, header in received] == [
        "customer.created",
        "customer.tax_id.created",
    ]
    assert {d["status"] for d in stripe_fake.deliveries} == {200}
