from __future__ import annotations

from decimal import Decimal

from django.conf import settings
from django.db import models
from django.utils import timezone

from tenants.limit_fields import LimitFields


class Plan(LimitFields):
    """A price list entry: default limits for the tenants on it."""

    slug = models.SlugField(max_length=50, unique=True)
    name = models.CharField(max_length=100)
    is_default = models.BooleanField(default=False, help_text="New tenants start on this plan.")
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

    class Meta:
        ordering = ["-created_at"]
        indexes = [models.Index(fields=["tenant", "-created_at"], name="usage_tenant_time")]
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
