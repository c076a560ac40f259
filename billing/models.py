from __future__ import annotations

from django.db import models


class UsageEvent(models.Model):
    """One served `/v1` request, success or failure. Billing truth: written once, never edited.

    Rows come from the data plane through a Redis stream; ``request_id`` makes ingest idempotent.
    """

    request_id = models.CharField(max_length=64, unique=True)
    tenant = models.ForeignKey("tenants.Tenant", on_delete=models.PROTECT, related_name="usage_events")
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

    def __str__(self) -> str:
        return f"{self.request_id} {self.model} {self.status}"

    @property
    def total_tokens(self) -> int:
        return self.prompt_tokens + self.completion_tokens
