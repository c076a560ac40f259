from __future__ import annotations

import uuid

from django.conf import settings
from django.core.validators import MaxValueValidator, MinValueValidator
from django.db import models
from django.utils import timezone

from core import ccaas
from core.quotas import FIELDS as LIMIT_FIELDS
from tenants.limit_fields import LimitFields

# Seven years: the longest a contact centre's records schedule asks for.
MAX_RETENTION_DAYS = 2557


class Touched(models.Model):
    """``updated_at`` moves on every save, a save of a few fields included (Django's ``auto_now`` alone skips
    a field left out of ``update_fields``): the snapshot reconciliation republishes what changed since its last
    run (``billing.snapshot.reconcile``), so a change that kept the old time could stay unpublished for good."""

    updated_at = models.DateTimeField(auto_now=True, db_index=True)

    class Meta:
        abstract = True

    def save(self, *args, update_fields=None, **kwargs):
        if update_fields is not None:
            update_fields = {*update_fields, "updated_at"}
        super().save(*args, update_fields=update_fields, **kwargs)


class Tenant(Touched):
    """A paying organisation: a CCaaS vendor or a contact centre."""

    class Status(models.TextChoices):
        ACTIVE = "active", "Active"
        SUSPENDED = "suspended", "Suspended"
        CLOSED = "closed", "Closed"

    class State(models.TextChoices):
        ACT = "ACT", "Australian Capital Territory"
        NSW = "NSW", "New South Wales"
        NT = "NT", "Northern Territory"
        QLD = "QLD", "Queensland"
        SA = "SA", "South Australia"
        TAS = "TAS", "Tasmania"
        VIC = "VIC", "Victoria"
        WA = "WA", "Western Australia"

    class Redaction(models.TextChoices):
        """Personal-information redaction on the tenant's API requests (``core.redaction``)."""

        OFF = "off", "Off"
        REDACT = "redact", "Redact personal information before it reaches the model"
        RESTORE = "restore", "Redact, and restore the originals in replies"

    class SentimentScorer(models.TextChoices):
        LEXICON = "lexicon", "Lexicon (fast, built in)"
        EMBEDDING = "embedding", "Embedding model (through the tenant's embedding model)"

    id = models.UUIDField(primary_key=True, default=uuid.uuid4, editable=False)
    name = models.CharField(max_length=200)
    slug = models.SlugField(max_length=80, unique=True)
    status = models.CharField(max_length=16, choices=Status.choices, default=Status.ACTIVE)
    status_reason = models.CharField(max_length=500, blank=True)
    abn = models.CharField("ABN", max_length=11, blank=True)
    billing_email = models.EmailField(blank=True)
    state = models.CharField(max_length=3, choices=State.choices, blank=True)
    redaction = models.CharField(max_length=8, choices=Redaction.choices, default=Redaction.OFF)
    # Transcript retention: days prompts, replies and conversation turns are kept (encrypted under the tenant's
    # data key); 0 is off, and nothing is stored.
    retention_days = models.PositiveIntegerField(
        default=0, validators=[MaxValueValidator(MAX_RETENTION_DAYS)],
        help_text="Days content is kept, encrypted; 0 keeps nothing.")
    # Conversations (CCaaS): when a conversation is handed to a person, how customer sentiment is scored, and how
    # many closed conversations get post-call analytics.
    escalation_threshold = models.FloatField(
        default=ccaas.DEFAULT_ESCALATION_THRESHOLD, validators=[MinValueValidator(-1.0), MaxValueValidator(1.0)],
        help_text="A customer turn scoring at or below this (from -1 to 1) counts as negative.")
    escalation_turns = models.PositiveSmallIntegerField(
        default=ccaas.DEFAULT_ESCALATION_TURNS, validators=[MaxValueValidator(20)],
        help_text="Negative customer turns in a row that escalate; 0 never escalates on sentiment alone.")
    escalation_phrases = models.TextField(
        default="\n".join(ccaas.DEFAULT_ESCALATION_PHRASES), blank=True,
        help_text="One per line: a customer turn containing any of them escalates at once.")
    sentiment_scorer = models.CharField(max_length=16, choices=SentimentScorer.choices,
                                        default=SentimentScorer.LEXICON)
    sentiment_model = models.CharField(max_length=200, blank=True,
                                       help_text="The embedding model the embedding scorer uses.")
    analytics_sample_percent = models.PositiveSmallIntegerField(
        default=ccaas.DEFAULT_ANALYTICS_SAMPLE_PERCENT, validators=[MaxValueValidator(100)],
        help_text="Percentage of closed conversations that get a summary and a QA score.")
    created_at = models.DateTimeField(default=timezone.now)

    class Meta:
        ordering = ["name"]

    def __str__(self) -> str:
        return self.name

    @property
    def is_active(self) -> bool:
        return self.status == self.Status.ACTIVE

    @property
    def escalation_phrase_list(self) -> tuple[str, ...]:
        """The trigger phrases, one per line, trimmed and lower-cased; blank lines dropped."""
        lines = (line.strip().lower() for line in self.escalation_phrases.splitlines())
        return tuple(line for line in lines if line)


class Role(models.TextChoices):
    OWNER = "owner", "Owner"
    ADMIN = "admin", "Admin"
    DEVELOPER = "developer", "Developer"
    BILLING = "billing", "Billing"
    AGENT = "agent", "Agent"


class Membership(models.Model):
    id = models.UUIDField(primary_key=True, default=uuid.uuid4, editable=False)
    tenant = models.ForeignKey(Tenant, on_delete=models.CASCADE, related_name="memberships")
    user = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="memberships")
    role = models.CharField(max_length=16, choices=Role.choices)
    created_at = models.DateTimeField(default=timezone.now)

    class Meta:
        constraints = [models.UniqueConstraint(fields=["tenant", "user"], name="membership_unique_user")]
        ordering = ["created_at"]

    def __str__(self) -> str:
        return f"{self.user} @ {self.tenant} ({self.role})"


class ApiKey(LimitFields, Touched):
    """An API key. Only an HMAC of the secret is stored; the full key is shown once, at creation.

    Rotation keeps the previous secret's hash until ``previous_secret_expires_at`` so callers can switch over
    without downtime. "Last used" is derived from usage events (``tenants.selectors``), never written on the
    request path.
    """

    class Scope(models.TextChoices):
        INFERENCE = "inference", "Inference (/v1)"
        MANAGEMENT_READ = "management:read", "Management API: read"
        MANAGEMENT_WRITE = "management:write", "Management API: write"

    tenant = models.ForeignKey(Tenant, on_delete=models.CASCADE, related_name="api_keys")
    key_id = models.CharField(max_length=16, unique=True, editable=False)
    name = models.CharField(max_length=100)
    secret_hash = models.CharField(max_length=64, editable=False)
    previous_secret_hash = models.CharField(max_length=64, blank=True, editable=False)
    previous_secret_expires_at = models.DateTimeField(null=True, blank=True, editable=False)
    rotated_at = models.DateTimeField(null=True, blank=True, editable=False)
    scopes = models.JSONField(default=list)
    allowed_models = models.JSONField(default=list, blank=True, help_text="Empty: every model.")
    expires_at = models.DateTimeField(null=True, blank=True)
    revoked_at = models.DateTimeField(null=True, blank=True)
    created_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )
    created_at = models.DateTimeField(default=timezone.now)

    LIMIT_FIELDS = LIMIT_FIELDS

    class Meta:
        ordering = ["-created_at"]
        indexes = [models.Index(fields=["tenant", "-created_at"])]

    def __str__(self) -> str:
        return f"{self.name} ({self.key_id})"

    @property
    def prefix(self) -> str:
        return f"wtl_{self.key_id}"

    @property
    def status(self) -> str:
        if self.revoked_at:
            return "revoked"
        if self.expires_at and self.expires_at <= timezone.now():
            return "expired"
        return "active"

    @property
    def previous_secret_active(self) -> bool:
        return bool(
            self.previous_secret_hash
            and self.previous_secret_expires_at
            and self.previous_secret_expires_at > timezone.now()
        )


class Invitation(models.Model):
    """An invitation to join a tenant. The token is emailed once and stored only as a SHA-256 digest; it can be
    used once, before ``expires_at``."""

    id = models.UUIDField(primary_key=True, default=uuid.uuid4, editable=False)
    tenant = models.ForeignKey(Tenant, on_delete=models.CASCADE, related_name="invitations")
    email = models.EmailField()
    role = models.CharField(max_length=16, choices=Role.choices)
    token_hash = models.CharField(max_length=64, unique=True, editable=False)
    invited_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )
    created_at = models.DateTimeField(default=timezone.now)
    expires_at = models.DateTimeField()
    accepted_at = models.DateTimeField(null=True, blank=True)
    accepted_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )
    revoked_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["-created_at"]
        indexes = [models.Index(fields=["tenant", "-created_at"], name="invitation_tenant_time")]

    def __str__(self) -> str:
        return f"{self.email} → {self.tenant} ({self.role})"

    @property
    def status(self) -> str:
        if self.accepted_at:
            return "accepted"
        if self.revoked_at:
            return "revoked"
        if self.expires_at <= timezone.now():
            return "expired"
        return "pending"

    @property
    def is_usable(self) -> bool:
        return self.status == "pending"


class PolicyAcceptance(models.Model):
    """A person accepted the terms and the privacy policy (after seeing the collection notice) at sign-up."""

    id = models.UUIDField(primary_key=True, default=uuid.uuid4, editable=False)
    user = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="policy_acceptances")
    tenant = models.ForeignKey(
        Tenant, null=True, blank=True, on_delete=models.SET_NULL, related_name="policy_acceptances"
    )
    terms_version = models.CharField(max_length=32)
    privacy_version = models.CharField(max_length=32)
    accepted_at = models.DateTimeField(default=timezone.now)
    ip = models.GenericIPAddressField(null=True, blank=True)

    class Meta:
        ordering = ["-accepted_at"]

    def __str__(self) -> str:
        return f"{self.user} accepted terms {self.terms_version} / privacy {self.privacy_version}"


class SupportSession(models.Model):
    """A platform staff member's "act as" session on a tenant (time-boxed, with a reason).

    The staff member's browser session only points at this row; the row says whether the session is open. So
    however it ends (ended by the staff member, replaced by another, or noticed expired on the next request or
    by the periodic job, whichever is first), the row is closed, and its end audited, exactly once."""

    class End(models.TextChoices):
        ENDED = "ended", "Ended by the staff member"
        REPLACED = "replaced", "Replaced by another session"
        EXPIRED = "expired", "Expired"

    id = models.UUIDField(primary_key=True, default=uuid.uuid4, editable=False)
    staff = models.ForeignKey(settings.AUTH_USER_MODEL, null=True, on_delete=models.SET_NULL, related_name="+")
    tenant = models.ForeignKey(Tenant, on_delete=models.CASCADE, related_name="support_sessions")
    reason = models.CharField(max_length=500)
    started_at = models.DateTimeField(default=timezone.now)
    expires_at = models.DateTimeField()
    ended_at = models.DateTimeField(null=True, blank=True)
    end = models.CharField(max_length=16, choices=End.choices, blank=True)

    class Meta:
        ordering = ["-started_at"]
        indexes = [
            models.Index(fields=["expires_at"], condition=models.Q(ended_at__isnull=True),
                         name="support_session_open"),
        ]

    def __str__(self) -> str:
        return f"{self.staff} as {self.tenant} ({self.started_at:%Y-%m-%d %H:%M})"
