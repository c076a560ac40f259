from __future__ import annotations

import uuid

from django.conf import settings
from django.db import models
from django.utils import timezone


def _default_region() -> str:
    return settings.INFERENCE_DEFAULT_REGION


class Backend(models.Model):
    """A vLLM replica (or a pool behind one URL). Health is runtime state and lives in Redis."""

    name = models.SlugField(max_length=100, unique=True)
    base_url = models.URLField(max_length=300, help_text="Without /v1, e.g. http://vllm-7b.internal:8000")
    api_key = models.CharField(max_length=200, blank=True, help_text="vLLM --api-key, if the replica has one.")
    served_models = models.JSONField(default=list, blank=True, help_text="Empty: discovered from /v1/models.")
    region = models.CharField(max_length=32, default=_default_region)
    weight = models.PositiveSmallIntegerField(default=100)
    max_concurrency = models.PositiveIntegerField(default=256)
    enabled = models.BooleanField(default=True)
    draining = models.BooleanField(default=False)
    created_at = models.DateTimeField(default=timezone.now)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        ordering = ["name"]

    def __str__(self) -> str:
        return self.name


class Conversation(models.Model):
    """A closed conversation of the conversation API, as the control plane keeps it: who, where, how it went
    (turn count, the sentiment scores of the customer's turns, escalation) and no text. The turns' text is never
    stored here: it reaches the analysis once, through the closed-conversation stream, and the transcript store
    (``audit``, only under the tenant's retention) is the one place content is kept."""

    id = models.UUIDField(primary_key=True, default=uuid.uuid4, editable=False)
    tenant = models.ForeignKey("tenants.Tenant", on_delete=models.CASCADE, related_name="conversations")
    conversation_id = models.CharField(max_length=128, help_text="The data plane's id of the conversation.")
    key_id = models.CharField(max_length=32, blank=True)
    model = models.CharField(max_length=200, blank=True)
    channel = models.CharField(max_length=16)
    language = models.CharField(max_length=35)
    customer_id = models.CharField(max_length=64, blank=True)
    turn_count = models.PositiveIntegerField(default=0)
    sentiment_trail = models.JSONField(default=list, blank=True, help_text="Scores of the customer's turns.")
    escalated = models.BooleanField(default=False)
    escalation_reason = models.CharField(max_length=200, blank=True)
    opened_at = models.DateTimeField()
    closed_at = models.DateTimeField()
    metadata = models.JSONField(default=dict, blank=True)
    sampled = models.BooleanField(default=False, help_text="Chosen for post-call analytics.")
    created_at = models.DateTimeField(default=timezone.now)

    class Meta:
        ordering = ["-closed_at", "-id"]
        constraints = [
            models.UniqueConstraint(fields=["tenant", "conversation_id"], name="conversation_once_per_tenant"),
        ]
        indexes = [
            models.Index(fields=["tenant", "-closed_at", "-id"], name="conversation_tenant_closed"),
            models.Index(fields=["tenant", "customer_id"], name="conversation_tenant_customer"),
        ]

    def __str__(self) -> str:
        return self.conversation_id


class ConversationAnalysis(models.Model):
    """The post-call analysis of one conversation: a summary and a QA score against the rubric
    (``inference.analytics``). The summary and the reasons are derived from the customer's words, so they are
    personal content: ``inference.analytics.conversation_content_erase`` blanks them for the retention and
    erasure jobs."""

    class Status(models.TextChoices):
        PENDING = "pending", "Pending"
        DONE = "done", "Done"
        FAILED = "failed", "Failed"

    id = models.UUIDField(primary_key=True, default=uuid.uuid4, editable=False)
    tenant = models.ForeignKey("tenants.Tenant", on_delete=models.CASCADE, related_name="conversation_analyses")
    conversation = models.ForeignKey(Conversation, on_delete=models.CASCADE, related_name="analyses")
    status = models.CharField(max_length=8, choices=Status.choices, default=Status.PENDING)
    failure_reason = models.CharField(max_length=300, blank=True)
    summary = models.TextField(blank=True)
    qa_score = models.PositiveSmallIntegerField(null=True, blank=True)
    # {item: {"score": 0..100, "reason": text}} for every item of the rubric version.
    rubric = models.JSONField(default=dict, blank=True)
    rubric_version = models.CharField(max_length=16)
    model = models.CharField(max_length=200)
    # SHA-256 of the transcript, the rubric version and the model: the same three give the same analysis.
    content_hash = models.CharField(max_length=64)
    cached_from = models.ForeignKey("self", null=True, blank=True, on_delete=models.SET_NULL, related_name="+")
    attempts = models.PositiveSmallIntegerField(default=0)
    prompt_tokens = models.PositiveIntegerField(default=0)
    completion_tokens = models.PositiveIntegerField(default=0)
    cost_micro_aud = models.PositiveBigIntegerField(default=0)
    request_id = models.CharField(max_length=64, blank=True, help_text="The last model request's id.")
    created_at = models.DateTimeField(default=timezone.now)
    completed_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["-created_at"]
        constraints = [
            models.UniqueConstraint(fields=["conversation", "rubric_version"], name="analysis_once_per_rubric"),
        ]
        indexes = [models.Index(fields=["tenant", "content_hash", "status"], name="analysis_cache")]

    def __str__(self) -> str:
        return f"{self.conversation_id} {self.status}"
