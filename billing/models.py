from __future__ import annotations

import uuid
from decimal import Decimal

from django.conf import settings
from django.db import models
from django.utils import timezone

from tenants.limit_fields import LimitFields


class Plan(LimitFields):
    """A price list entry: what a tenant on it pays (a monthly fee, tokens at the model prices past those included)
    and the default limits it gets. A plan with ``requires_payment`` serves only under a subscription in good
    standing; the others (the free Trial, Internal, contract plans invoiced outside Stripe) serve without one."""

    slug = models.SlugField(max_length=50, unique=True)
    name = models.CharField(max_length=100)
    is_default = models.BooleanField(default=False, help_text="New tenants start on this plan.")
    monthly_fee_aud = models.DecimalField(
        "monthly fee (A$, GST exclusive)", max_digits=10, decimal_places=2, default=Decimal("0")
    )
    included_tokens = models.PositiveBigIntegerField(
        default=0, help_text="Input and output tokens of each model included in the fee every period."
    )
    trial_days = models.PositiveSmallIntegerField(default=0, help_text="Free days before the first charge.")
    trial_card_required = models.BooleanField(
        default=True, help_text="Off: the trial starts without a card; it ends unless one is added."
    )
    self_serve = models.BooleanField(default=False, help_text="Tenants can choose it in the console (Checkout).")
    requires_payment = models.BooleanField(
        default=False, help_text="Serves only under a Stripe subscription in good standing."
    )
    stripe_product_id = models.CharField(max_length=64, blank=True)
    synced_at = models.DateTimeField(null=True, blank=True, help_text="Last synced to Stripe.")
    created_at = models.DateTimeField(default=timezone.now)
    updated_at = models.DateTimeField(auto_now=True)  # the snapshot reconciliation republishes what changed

    class Meta:
        ordering = ["name"]
        constraints = [
            models.UniqueConstraint(fields=["is_default"], condition=models.Q(is_default=True), name="one_default_plan")
        ]

    def __str__(self) -> str:
        return self.name


class ModelPrice(models.Model):
    """What a model costs, per thousand tokens, in AUD (GST exclusive)."""

    model = models.CharField(max_length=200, unique=True)
    input_per_1k_aud = models.DecimalField(max_digits=10, decimal_places=6, default=Decimal("0"))
    output_per_1k_aud = models.DecimalField(max_digits=10, decimal_places=6, default=Decimal("0"))

    class Meta:
        ordering = ["model"]

    def __str__(self) -> str:
        return self.model


class PlanModelPrice(models.Model):
    """A plan's own price for a model, per million tokens in AUD (GST exclusive), over the platform's
    ``ModelPrice`` for tenants on that plan. A model the plan has no price of its own for costs the platform price
    (``billing.pricing`` resolves both, for every reader)."""

    plan = models.ForeignKey(Plan, on_delete=models.CASCADE, related_name="model_prices")
    model = models.CharField(max_length=200)
    # A$ per million tokens is also micro-A$ per token; four decimals reach A$0.0001 per million.
    input_per_1m_aud = models.DecimalField(max_digits=14, decimal_places=4)
    output_per_1m_aud = models.DecimalField(max_digits=14, decimal_places=4)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        ordering = ["plan", "model"]
        constraints = [models.UniqueConstraint(fields=["plan", "model"], name="one_price_per_plan_model")]

    def __str__(self) -> str:
        return f"{self.plan} {self.model}"


class TenantQuota(LimitFields):
    """A tenant's plan and the limits staff set for it, overriding the plan's."""

    tenant = models.OneToOneField("tenants.Tenant", on_delete=models.CASCADE, related_name="quota")
    plan = models.ForeignKey(Plan, null=True, blank=True, on_delete=models.PROTECT, related_name="tenants")
    updated_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )
    updated_at = models.DateTimeField(auto_now=True, db_index=True)

    def __str__(self) -> str:
        return f"quota of {self.tenant}"


class UsageEvent(models.Model):
    """One served `/v1` request, success or failure. Billing truth: written once, never edited.

    Rows come from the data plane through a Redis stream; ``request_id`` makes ingest idempotent.
    """

    # Unique through a constraint rather than unique=True: on PostgreSQL the latter adds a second, pattern-ops
    # index that nothing queries and every insert pays for.
    request_id = models.CharField(max_length=64)
    # No index of its own: ``usage_tenant_time`` starts with tenant and serves every per-tenant query.
    tenant = models.ForeignKey(
        "tenants.Tenant", on_delete=models.PROTECT, related_name="usage_events", db_index=False
    )
    key_id = models.CharField(max_length=16, blank=True)
    endpoint = models.CharField(max_length=32)
    model = models.CharField(max_length=200, blank=True)
    backend = models.CharField(max_length=100, blank=True)
    status = models.PositiveSmallIntegerField()
    error_code = models.CharField(max_length=64, blank=True)
    stream = models.BooleanField(default=False)
    client_disconnected = models.BooleanField(default=False)
    prompt_tokens = models.PositiveIntegerField(default=0)
    completion_tokens = models.PositiveIntegerField(default=0)
    ttft_ms = models.FloatField(null=True, blank=True)
    duration_ms = models.FloatField(default=0)
    created_at = models.DateTimeField(db_index=True)
    # The access record (R-AUD-1, docs/audit.md): the end customer the tenant named ("" if none), redaction
    # (None: off; otherwise replacements per identifier type, counts only) and SHA-256 digests of prompt and reply
    # (lowercase hex; "" for events from before them). Never any text of the prompt or the reply.
    # Database defaults too: during a rolling deploy, an ingest worker still on the old code inserts without them.
    customer_id = models.CharField(max_length=256, blank=True, default="", db_default="")
    redactions = models.JSONField(null=True, blank=True)
    prompt_sha256 = models.CharField(max_length=64, blank=True, default="", db_default="")
    reply_sha256 = models.CharField(max_length=64, blank=True, default="", db_default="")
    # The ``access.batch`` audit entry that sealed this row into the chain (its id); None until the sealer
    # (``billing.access_log.access_seal``) runs. Not a foreign key: billing reads audit, never the other way.
    access_batch = models.BigIntegerField(null=True, blank=True)

    class Meta:
        ordering = ["-created_at"]
        indexes = [
            models.Index(fields=["tenant", "-created_at"], name="usage_tenant_time"),
            # An end customer's requests (individuals' requests, the blast radius): a tenant's customer in a window.
            models.Index(fields=["tenant", "customer_id", "-created_at"], name="usage_tenant_customer_time"),
            # The sealer's queue (rows not yet sealed, in id order) and the verifier's batches.
            models.Index(fields=["id"], condition=models.Q(access_batch__isnull=True), name="usage_unsealed"),
            models.Index(fields=["access_batch", "id"], name="usage_access_batch"),
        ]
        constraints = [models.UniqueConstraint(fields=["request_id"], name="usage_request_id_unique")]

    def __str__(self) -> str:
        return f"{self.request_id} {self.model} {self.status}"

    @property
    def total_tokens(self) -> int:
        return self.prompt_tokens + self.completion_tokens


class BudgetAlert(models.Model):
    """A budget crossed a threshold in a period: sent once (email to billing contacts, console banner)."""

    class Budget(models.TextChoices):
        DAY_TOKENS = "day_tokens", "daily token budget"
        MONTH_TOKENS = "month_tokens", "monthly token budget"
        MONTH_SPEND = "month_spend", "monthly spend cap"

    tenant = models.ForeignKey("tenants.Tenant", on_delete=models.CASCADE, related_name="budget_alerts")
    budget = models.CharField(max_length=16, choices=Budget.choices)
    period = models.CharField(max_length=8, help_text="YYYYMMDD for daily budgets, YYYYMM for monthly ones.")
    threshold = models.PositiveSmallIntegerField()
    used = models.PositiveBigIntegerField()
    limit = models.PositiveBigIntegerField()
    created_at = models.DateTimeField(default=timezone.now)

    class Meta:
        ordering = ["-created_at"]
        constraints = [
            models.UniqueConstraint(fields=["tenant", "budget", "period", "threshold"], name="budget_alert_once")
        ]

    def __str__(self) -> str:
        return f"{self.tenant} {self.budget} {self.threshold}% ({self.period})"


class CostGuardAction(models.Model):
    """The cost guard throttled or suspended a tenant whose spend spiked; staff can lift it in one click."""

    class Kind(models.TextChoices):
        THROTTLE = "throttle", "Throttled"
        SUSPEND = "suspend", "Suspended"

    tenant = models.ForeignKey("tenants.Tenant", on_delete=models.CASCADE, related_name="cost_guard_actions")
    kind = models.CharField(max_length=16, choices=Kind.choices)
    reason = models.CharField(max_length=500)
    last_hour_aud = models.DecimalField(max_digits=12, decimal_places=2)
    baseline_hour_aud = models.DecimalField(max_digits=12, decimal_places=2)
    previous = models.JSONField(default=dict, help_text="What the action changed, so lifting restores it.")
    created_at = models.DateTimeField(default=timezone.now)
    lifted_at = models.DateTimeField(null=True, blank=True)
    lifted_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )

    class Meta:
        ordering = ["-created_at"]

    def __str__(self) -> str:
        return f"{self.get_kind_display()} {self.tenant}"

    @property
    def active(self) -> bool:
        return self.lifted_at is None


class StripePrice(models.Model):
    """A Stripe Price we created for a plan: its monthly fee, or the input or output tokens of one model.

    Stripe prices can't change amount: a new amount is a new price, and the old one is kept (``active=False``)
    so subscriptions on it still read."""

    class Kind(models.TextChoices):
        FEE = "fee", "Monthly fee"
        INPUT = "input", "Input tokens"
        OUTPUT = "output", "Output tokens"

    plan = models.ForeignKey(Plan, on_delete=models.CASCADE, related_name="stripe_prices")
    kind = models.CharField(max_length=8, choices=Kind.choices)
    model = models.CharField(max_length=200, blank=True, help_text="Empty for the fee.")
    meter = models.CharField(max_length=100, blank=True, help_text="The meter's event name (token prices).")
    stripe_price_id = models.CharField(max_length=64, unique=True)
    amount = models.CharField(max_length=64, help_text="What the price charges, as sent: detects a change.")
    active = models.BooleanField(default=True)
    created_at = models.DateTimeField(default=timezone.now)

    class Meta:
        ordering = ["plan", "kind", "model"]
        constraints = [
            models.UniqueConstraint(fields=["plan", "kind", "model"], condition=models.Q(active=True),
                                    name="one_active_stripe_price"),
        ]

    def __str__(self) -> str:
        return f"{self.plan} {self.kind} {self.model}".strip()


class StripeMeter(models.Model):
    """A Stripe Billing Meter: the input or output tokens of one model, reported per tenant and hour."""

    model = models.CharField(max_length=200)
    direction = models.CharField(max_length=8, choices=[("input", "Input"), ("output", "Output")])
    event_name = models.CharField(max_length=100, unique=True)
    stripe_meter_id = models.CharField(max_length=64, unique=True)

    class Meta:
        ordering = ["model", "direction"]
        constraints = [models.UniqueConstraint(fields=["model", "direction"], name="one_meter_per_model_direction")]

    def __str__(self) -> str:
        return self.event_name


class Subscription(models.Model):
    """A tenant's Stripe customer and subscription, as the newest webhook (or re-read) left them."""

    class Status(models.TextChoices):
        NONE = "", "Not subscribed"
        INCOMPLETE = "incomplete", "Incomplete"
        INCOMPLETE_EXPIRED = "incomplete_expired", "Incomplete (expired)"
        TRIALING = "trialing", "Trialing"
        ACTIVE = "active", "Active"
        PAST_DUE = "past_due", "Past due"
        CANCELED = "canceled", "Cancelled"
        UNPAID = "unpaid", "Unpaid"
        PAUSED = "paused", "Paused"

    tenant = models.OneToOneField("tenants.Tenant", on_delete=models.CASCADE, related_name="subscription")
    plan = models.ForeignKey(Plan, null=True, blank=True, on_delete=models.PROTECT, related_name="subscriptions")
    stripe_customer_id = models.CharField(max_length=64, blank=True, db_index=True)
    stripe_subscription_id = models.CharField(max_length=64, blank=True, db_index=True)
    status = models.CharField(max_length=24, choices=Status.choices, blank=True, default=Status.NONE)
    # Stripe's ``start_date``: usage before it (on the free plan) is never billed under the subscription, and the
    # meter reports split the hour it falls in (``billing.meters``).
    started_at = models.DateTimeField(null=True, blank=True)
    current_period_start = models.DateTimeField(null=True, blank=True)
    current_period_end = models.DateTimeField(null=True, blank=True)
    trial_end = models.DateTimeField(null=True, blank=True)
    cancel_at_period_end = models.BooleanField(default=False)
    past_due_since = models.DateTimeField(null=True, blank=True)
    # Stripe's ``created`` of the newest event applied: an older event arriving late changes nothing.
    stripe_seen = models.PositiveBigIntegerField(default=0)
    tax_ids = models.JSONField(default=list, blank=True, help_text="The customer's tax ids, as Stripe has them.")
    # The billing contacts are emailed once when a payment fails and once when the API stops for want of payment,
    # per past-due episode: a notice older than ``past_due_since`` belongs to an earlier one.
    past_due_notified_at = models.DateTimeField(null=True, blank=True)
    refused_notified_at = models.DateTimeField(null=True, blank=True)
    updated_at = models.DateTimeField(auto_now=True, db_index=True)

    def __str__(self) -> str:
        return f"subscription of {self.tenant}"


class CheckoutSession(models.Model):
    """A Checkout a tenant member started: which plan, and how it ended (the return page shows it)."""

    class Status(models.TextChoices):
        OPEN = "open", "Open"
        COMPLETE = "complete", "Complete"
        EXPIRED = "expired", "Expired"

    id = models.UUIDField(primary_key=True, default=uuid.uuid4, editable=False)
    tenant = models.ForeignKey("tenants.Tenant", on_delete=models.CASCADE, related_name="checkout_sessions")
    plan = models.ForeignKey(Plan, on_delete=models.PROTECT, related_name="+")
    stripe_session_id = models.CharField(max_length=255, unique=True)
    status = models.CharField(max_length=16, choices=Status.choices, default=Status.OPEN)
    created_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )
    created_at = models.DateTimeField(default=timezone.now)
    completed_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["-created_at"]

    def __str__(self) -> str:
        return self.stripe_session_id


class StripeEvent(models.Model):
    """Every verified webhook event, stored before it is processed; the event id makes processing idempotent."""

    event_id = models.CharField(max_length=255, unique=True)
    type = models.CharField(max_length=100)
    created = models.PositiveBigIntegerField(help_text="Stripe's ``created`` (epoch seconds).")
    payload = models.JSONField()
    tenant = models.ForeignKey(
        "tenants.Tenant", null=True, blank=True, on_delete=models.SET_NULL, related_name="stripe_events"
    )
    received_at = models.DateTimeField(default=timezone.now)
    processed_at = models.DateTimeField(null=True, blank=True)
    error = models.CharField(max_length=500, blank=True)

    class Meta:
        ordering = ["-received_at"]

    def __str__(self) -> str:
        return f"{self.event_id} {self.type}"


class Invoice(models.Model):
    """A Stripe invoice as its webhooks left it: the console lists these without calling Stripe."""

    tenant = models.ForeignKey("tenants.Tenant", on_delete=models.CASCADE, related_name="invoices")
    stripe_invoice_id = models.CharField(max_length=64, unique=True)
    number = models.CharField(max_length=64, blank=True)
    status = models.CharField(max_length=24)
    currency = models.CharField(max_length=3, default="aud")
    subtotal_cents = models.BigIntegerField(default=0)
    tax_cents = models.BigIntegerField(default=0)
    total_cents = models.BigIntegerField(default=0)
    amount_due_cents = models.BigIntegerField(default=0)
    amount_paid_cents = models.BigIntegerField(default=0)
    period_start = models.DateTimeField(null=True, blank=True)
    period_end = models.DateTimeField(null=True, blank=True)
    hosted_invoice_url = models.URLField(max_length=1000, blank=True)
    invoice_pdf = models.URLField(max_length=1000, blank=True)
    lines = models.JSONField(default=list, blank=True, help_text="Price id, meter, quantity and amount per line.")
    created = models.DateTimeField()
    stripe_seen = models.PositiveBigIntegerField(default=0)

    class Meta:
        ordering = ["-created"]
        indexes = [models.Index(fields=["tenant", "-created"], name="invoice_tenant_created")]

    def __str__(self) -> str:
        return self.number or self.stripe_invoice_id


class UsageRollup(models.Model):
    """Usage per tenant, key and model over an hour (UTC) or a day (Sydney), built from usage events by a worker.

    Consoles and the API read these, never the raw events. ``cost_micro_aud`` is rated at the prices in force when
    the rollup job read the events (the same prices the spend cap counted)."""

    class Period(models.TextChoices):
        HOUR = "h", "Hour"
        DAY = "d", "Day"

    tenant = models.ForeignKey("tenants.Tenant", on_delete=models.CASCADE, related_name="+", db_index=False)
    period = models.CharField(max_length=1, choices=Period.choices)
    start = models.DateTimeField()
    key_id = models.CharField(max_length=16, blank=True)
    model = models.CharField(max_length=200, blank=True)
    requests = models.PositiveIntegerField(default=0)
    errors = models.PositiveIntegerField(default=0)
    prompt_tokens = models.PositiveBigIntegerField(default=0)
    completion_tokens = models.PositiveBigIntegerField(default=0)
    cost_micro_aud = models.PositiveBigIntegerField(default=0)

    class Meta:
        ordering = ["-start"]
        constraints = [
            models.UniqueConstraint(fields=["tenant", "period", "start", "key_id", "model"], name="rollup_bucket"),
        ]

    def __str__(self) -> str:
        return f"{self.tenant_id} {self.period} {self.start:%Y-%m-%d %H}h {self.key_id} {self.model}"


class RollupWatermark(models.Model):
    """How far the rollup job has read the usage events (by id)."""

    name = models.CharField(max_length=32, unique=True)
    last_id = models.BigIntegerField(default=0)
    updated_at = models.DateTimeField(auto_now=True)

    def __str__(self) -> str:
        return f"{self.name} at {self.last_id}"


class MeterReport(models.Model):
    """The outbox of Stripe meter events: one row per (tenant, meter, span), plus a correcting row when usage for
    a span arrives after it was reported. A span is an hour, or, in an hour a subscription starts or a billing
    period ends in, the part of the hour on one side of that moment. Marked sent only after Stripe acknowledged
    it; ``identifier`` is stable across retries, so Stripe drops a second delivery."""

    tenant = models.ForeignKey("tenants.Tenant", on_delete=models.PROTECT, related_name="+")
    meter = models.CharField(max_length=100, help_text="The meter's event name.")
    hour = models.DateTimeField(help_text="The UTC hour the span lies in.")
    # The meter event's timestamp: Stripe bills it in the period that holds it.
    span_start = models.DateTimeField(help_text="Where the span starts: the hour, or a part of it.")
    sequence = models.PositiveSmallIntegerField(default=0, help_text="0 for the span's report, 1… corrections.")
    quantity = models.PositiveBigIntegerField()
    identifier = models.CharField(max_length=100, unique=True)
    stripe_customer_id = models.CharField(max_length=64)
    created_at = models.DateTimeField(default=timezone.now)
    sent_at = models.DateTimeField(null=True, blank=True)
    attempts = models.PositiveIntegerField(default=0)
    next_attempt_at = models.DateTimeField(default=timezone.now)
    last_error = models.CharField(max_length=200, blank=True)
    refused = models.BooleanField(default=False, help_text="Stripe refused it for good (staff must look).")

    class Meta:
        ordering = ["span_start", "meter", "sequence"]
        constraints = [
            models.UniqueConstraint(fields=["tenant", "meter", "span_start", "sequence"], name="meter_report_once"),
        ]
        indexes = [
            models.Index(fields=["sent_at", "next_attempt_at"], name="meter_report_due"),
            models.Index(fields=["tenant", "hour"], name="meter_report_tenant_hour"),
        ]

    def __str__(self) -> str:
        return self.identifier


class PlanSwitch(models.Model):
    """When a tenant's subscription changed plan: a boundary of the meter reports, like a period's. The old plan's
    metered prices leave the subscription at that moment, so the part of its hour before it is reported (and sent)
    before Stripe's update, and the part after it is stamped at this moment, where the new plan's prices bill it."""

    tenant = models.ForeignKey("tenants.Tenant", on_delete=models.CASCADE, related_name="+")
    at = models.DateTimeField(help_text="The switch, to the second: usage from then on is the new plan's.")
    created_at = models.DateTimeField(default=timezone.now)

    class Meta:
        ordering = ["at"]
        indexes = [models.Index(fields=["tenant", "at"], name="plan_switch_tenant_at")]

    def __str__(self) -> str:
        return f"{self.tenant_id} at {self.at:%Y-%m-%d %H:%M:%S}"
