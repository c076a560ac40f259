"""The management API's billing shapes (``/api/v1/billing``, ``/api/v1/billing/invoices``). Amounts in A$ are
decimal strings (GST exclusive unless named otherwise); Stripe's invoice amounts stay in cents, as Stripe sends
them."""

from __future__ import annotations

from decimal import ROUND_HALF_UP

from rest_framework import serializers

from billing.bill_estimate import ChargeLine

PROJECTION_METHOD = (
    "The plan's monthly fee plus, for each model, the input and the output tokens past the plan's included tokens "
    "(of each), at the model's prices. `projected` scales each model's tokens so far linearly to the end of the "
    "period (tokens x period length / time elapsed, at least one day elapsed) and applies the same rule. At "
    "today's prices, GST exclusive."
)


def _money(places: int = 2, **kwargs) -> serializers.DecimalField:
    return serializers.DecimalField(max_digits=20, decimal_places=places, rounding=ROUND_HALF_UP, **kwargs)


class BillingPlanSerializer(serializers.Serializer):
    slug = serializers.CharField()
    name = serializers.CharField()
    monthly_fee_aud = _money(help_text="The monthly fee, A$, GST exclusive.")
    included_tokens = serializers.IntegerField(
        help_text="Input tokens, and output tokens, of each model included in the fee every period.")
    trial_days = serializers.IntegerField()


class SubscriptionStateSerializer(serializers.Serializer):
    status = serializers.CharField(help_text="Stripe's subscription status; empty when not subscribed.")
    label = serializers.CharField()
    trial_end = serializers.DateTimeField(allow_null=True)
    cancel_at_period_end = serializers.BooleanField()
    grace_deadline = serializers.DateTimeField(
        allow_null=True, help_text="Past due: when the API starts answering 402 payment_required.")
    refused = serializers.BooleanField(help_text="The API refuses requests now, for want of payment (402).")
    message = serializers.CharField(help_text="What is going on, and what to do, in words.")


class PeriodSerializer(serializers.Serializer):
    start = serializers.DateTimeField()
    end = serializers.DateTimeField()
    kind = serializers.ChoiceField(
        source="source", help_text="Whose period: the subscription's, or the Sydney calendar month without one.",
        choices=[("subscription", "the subscription's billing period"), ("month", "the Sydney calendar month")])


class ModelUsageSerializer(serializers.Serializer):
    model = serializers.CharField()
    requests = serializers.IntegerField()
    prompt_tokens = serializers.IntegerField()
    completion_tokens = serializers.IntegerField()
    total_tokens = serializers.IntegerField()
    cost_aud = _money(6, help_text="At list prices, before included tokens.")


class PeriodUsageSerializer(serializers.Serializer):
    requests = serializers.IntegerField()
    prompt_tokens = serializers.IntegerField()
    completion_tokens = serializers.IntegerField()
    total_tokens = serializers.IntegerField()
    cost_aud = _money(6, help_text="At list prices, before included tokens.")
    by_model = ModelUsageSerializer(many=True)


class ChargeLineSerializer(serializers.Serializer):
    model = serializers.CharField()
    direction = serializers.ChoiceField(choices=[("input", "input tokens"), ("output", "output tokens")])
    tokens = serializers.IntegerField(help_text="So far.")
    included = serializers.IntegerField()
    billable = serializers.IntegerField()
    per_1m_aud = _money(6)
    to_date_aud = _money(6)
    projected_tokens = serializers.IntegerField()
    projected_aud = _money(6)


class ProjectedBillSerializer(serializers.Serializer):
    fee_aud = _money()
    to_date_aud = _money()
    projected_aud = _money()
    lines = ChargeLineSerializer(many=True)
    method = serializers.CharField()


class SpendSerializer(serializers.Serializer):
    used_aud = _money(help_text="This Sydney calendar month, as the spend cap counts it.")
    cap_aud = _money(allow_null=True, help_text="The monthly spend cap; null for none.")


class PriceSerializer(serializers.Serializer):
    model = serializers.CharField()
    input_per_1m_aud = _money(6)
    output_per_1m_aud = _money(6)


class InvoiceSerializer(serializers.Serializer):
    id = serializers.CharField(source="stripe_invoice_id", help_text="Stripe's invoice id.")
    number = serializers.CharField()
    status = serializers.CharField(help_text="Stripe's status: open, paid, uncollectible or void.")
    currency = serializers.CharField()
    subtotal_cents = serializers.IntegerField()
    tax_cents = serializers.IntegerField(help_text="GST.")
    total_cents = serializers.IntegerField(help_text="Including GST.")
    amount_due_cents = serializers.IntegerField()
    amount_paid_cents = serializers.IntegerField()
    period_start = serializers.DateTimeField(allow_null=True)
    period_end = serializers.DateTimeField(allow_null=True)
    created = serializers.DateTimeField()
    hosted_invoice_url = serializers.URLField(allow_blank=True)
    invoice_pdf = serializers.URLField(allow_blank=True)


class BillingSerializer(serializers.Serializer):
    as_of = serializers.DateTimeField()
    payments_configured = serializers.BooleanField(
        help_text="False: nothing is charged; the amounts are estimates only.")
    plan = BillingPlanSerializer(allow_null=True)
    subscription = SubscriptionStateSerializer()
    period = PeriodSerializer()
    usage = PeriodUsageSerializer(help_text="The current period's usage: every request inside it, to the second.")
    projected_bill = ProjectedBillSerializer()
    spend = SpendSerializer()
    prices = PriceSerializer(many=True)
    invoices = InvoiceSerializer(many=True, help_text="The newest invoices (at most 12); all of them are under "
                                                      "/api/v1/billing/invoices.")


def billing_payload(overview, invoices) -> dict:
    """The overview (``billing.billing_reads.BillingOverview``) in the serializer's terms."""
    usage, est, state = overview.usage, overview.estimate, overview.state

    def line(done: ChargeLine, projected: ChargeLine) -> dict:
        return {"model": done.model, "direction": done.direction, "tokens": done.tokens, "included": done.included,
                "billable": done.billable, "per_1m_aud": done.per_1m, "to_date_aud": done.amount,
                "projected_tokens": projected.tokens, "projected_aud": projected.amount}

    def totals(row) -> dict:
        return {"requests": row.requests, "prompt_tokens": row.prompt_tokens,
                "completion_tokens": row.completion_tokens, "total_tokens": row.total_tokens,
                "cost_aud": row.cost_aud}

    return {
        "as_of": overview.period.now,
        "payments_configured": overview.payments_configured,
        "plan": overview.plan,
        "subscription": state,
        "period": overview.period,
        "usage": {**totals(usage.totals),
                  "by_model": [{"model": m, **totals(row)} for m, row in usage.by_model.items()]},
        "projected_bill": {"fee_aud": est.fee, "to_date_aud": est.to_date, "projected_aud": est.projected,
                           "lines": [line(a, b) for a, b in est.line_pairs], "method": PROJECTION_METHOD},
        "spend": {"used_aud": overview.spend.used, "cap_aud": overview.spend.limit},
        "prices": [{"model": m, "input_per_1m_aud": r.input_per_1k * 1000, "output_per_1m_aud": r.output_per_1k * 1000}
                   for m, r in sorted(overview.rates.items())],
        "invoices": invoices,
    }
