from __future__ import annotations

import uuid
from datetime import timedelta

from django.conf import settings
from django.db import models
from django.utils import timezone

USER_AGENT_MAX = 256


class AppendOnly(Exception):
    """Raised by any attempt to change or remove an audit entry through the ORM."""


class AuditEntryQuerySet(models.QuerySet):
    """No update or delete path in code (R-AUD-2); the database refuses them too (``audit.guard``)."""

    def update(self, **kwargs):
        raise AppendOnly("audit entries are append-only")

    def delete(self):
        raise AppendOnly("audit entries are append-only")

    _raw_delete = delete


class AuditEntry(models.Model):
    """A security-relevant event (APP 11, ISM event logging). Written only by ``audit.services.record``; chained
    (``seq``, ``prev_hash``, ``hash``) afterwards by ``audit.services.audit_seal``, the one change the database
    allows on a row (docs/audit.md)."""

    class ActorKind(models.TextChoices):
        USER = "user", "User"
        API_KEY = "api_key", "API key"
        SYSTEM = "system", "System"

    created_at = models.DateTimeField(default=timezone.now, db_index=True)
    action = models.CharField(max_length=64, db_index=True)
    actor_kind = models.CharField(max_length=8, choices=ActorKind.choices, default=ActorKind.SYSTEM)
    # No database constraint and nothing done on delete: the row may never change, and a deleted user's or
    # tenant's id stays as it was recorded (actor_label keeps who it was).
    actor = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.DO_NOTHING, db_constraint=False,
        related_name="+",
    )
    # Kept even if the user is later deleted: who did it must survive the account.
    actor_label = models.CharField(max_length=254, blank=True)
    api_key_id = models.CharField(max_length=32, blank=True)  # the key's visible id (wtl_<key_id>_...)
    tenant = models.ForeignKey(
        "tenants.Tenant", null=True, blank=True, on_delete=models.DO_NOTHING, db_constraint=False,
        related_name="audit_entries",
    )
    target_type = models.CharField(max_length=64, blank=True)
    target_id = models.CharField(max_length=64, blank=True)
    ip = models.GenericIPAddressField(null=True, blank=True)
    user_agent = models.CharField(max_length=USER_AGENT_MAX, blank=True)
    request_id = models.CharField(max_length=64, blank=True)
    data = models.JSONField(default=dict, blank=True)
    # The chain: empty until sealed, then set once (the database refuses any other change).
    seq = models.BigIntegerField(null=True, blank=True, unique=True)
    prev_hash = models.CharField(max_length=64, blank=True)
    hash = models.CharField(max_length=64, blank=True)

    objects = AuditEntryQuerySet.as_manager()

    class Meta:
        ordering = ["-created_at", "-id"]
        verbose_name_plural = "audit entries"
        indexes = [
            models.Index(fields=["tenant", "-created_at"], name="audit_tenant_time"),
            # The browser's filters: by action or by actor within a time range, newest first.
            models.Index(fields=["action", "-created_at"], name="audit_action_time"),
            models.Index(fields=["actor", "-created_at"], name="audit_actor_time"),
            models.Index(fields=["api_key_id", "-created_at"], name="audit_key_time"),
            # What the sealer looks for: a small partial index, empty once everything is chained.
            models.Index(fields=["id"], condition=models.Q(hash=""), name="audit_unsealed"),
        ]

    def __str__(self) -> str:
        return f"{self.created_at:%Y-%m-%d %H:%M:%S} {self.action}"

    def save(self, *args, **kwargs):
        if not self._state.adding:
            raise AppendOnly("audit entries are append-only")
        kwargs["force_insert"] = True
        super().save(*args, **kwargs)

    def delete(self, *args, **kwargs):
        raise AppendOnly("audit entries are append-only")


# --- Breach register (NDB scheme) -------------------------------------------------------------------
# Written only by audit.incident_services. Tenants are named by string so audit imports nothing it records.
ASSESSMENT_DAYS = 30  # NDB: a suspected eligible breach is assessed within 30 days of becoming aware of it


class Incident(models.Model):
    """A suspected data breach, from the moment staff became aware of it until its assessment is closed."""

    class Status(models.TextChoices):
        ASSESSING = "assessing", "Assessing"
        DECIDED = "decided", "Decided"
        CLOSED = "closed", "Closed"

    class Decision(models.TextChoices):
        ELIGIBLE = "eligible", "Eligible data breach (notify the OAIC and individuals)"
        NOT_ELIGIBLE = "not_eligible", "Not an eligible data breach"

    id = models.UUIDField(primary_key=True, default=uuid.uuid4, editable=False)
    title = models.CharField(max_length=200)
    summary = models.TextField()
    became_aware_at = models.DateTimeField()
    status = models.CharField(max_length=16, choices=Status.choices, default=Status.ASSESSING, db_index=True)
    # What it touched, for the blast-radius query: any of a key id, a backend, a component, in a window.
    window_start = models.DateTimeField(null=True, blank=True)
    window_end = models.DateTimeField(null=True, blank=True)
    key_id = models.CharField(max_length=16, blank=True)
    backend = models.CharField(max_length=100, blank=True)
    component = models.CharField(max_length=32, blank=True)
    decision = models.CharField(max_length=16, choices=Decision.choices, blank=True)
    decision_reasons = models.TextField(blank=True)
    decided_at = models.DateTimeField(null=True, blank=True)
    closed_at = models.DateTimeField(null=True, blank=True)
    opened_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )
    created_at = models.DateTimeField(default=timezone.now)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        ordering = ["-became_aware_at"]

    def __str__(self) -> str:
        return self.title

    @property
    def assessment_due_at(self):
        return self.became_aware_at + timedelta(days=ASSESSMENT_DAYS)

    def days_left(self, now=None) -> int:
        """Whole days until the assessment is due (negative once overdue)."""
        return (self.assessment_due_at - (now or timezone.now())).days


class IncidentNotification(models.Model):
    """One tenant told about an incident: whom, when, what was sent (the text, never end-customer content)."""

    incident = models.ForeignKey(Incident, on_delete=models.PROTECT, related_name="notifications")
    tenant = models.ForeignKey("tenants.Tenant", on_delete=models.PROTECT, related_name="+")
    recipients = models.JSONField(default=list)
    subject = models.CharField(max_length=200)
    body = models.TextField()
    sent_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )
    sent_at = models.DateTimeField(default=timezone.now)

    class Meta:
        ordering = ["-sent_at"]

    def __str__(self) -> str:
        return f"{self.incident} → {self.tenant} ({self.sent_at:%Y-%m-%d})"


# --- Individuals' requests (APP 12 access, APP 13 correction) -------------------------------------------
# Written only by audit.privacy_requests. Tenants are named by string (audit imports nothing it records).
PRIVACY_REQUEST_DAYS = 30  # APP 12.4 / 13.5: respond within a reasonable period, taken as 30 days
CUSTOMER_ID_MAX = 64  # core.ccaas's customer id


class PrivacyRequest(models.Model):
    """One individual's request about what a tenant holds on them through Wattle, keyed by the tenant's own
    end-customer id: a copy of everything (access), a correction (the records were filed under the wrong id), a
    statement to keep with the records (annotation), or erasure. The request itself is kept after it is done, so
    that it can be shown to have been handled (R-DSR-2); it holds the id and what was done, never content."""

    class Kind(models.TextChoices):
        ACCESS = "access", "Access: a copy of everything held"
        CORRECT = "correct", "Correction: move the records to the right customer id"
        ANNOTATE = "annotate", "Annotation: keep the individual's statement with the records"
        ERASE = "erase", "Erasure: delete content and de-identify the rest"

    class Status(models.TextChoices):
        RECEIVED = "received", "Received"
        COMPLETED = "completed", "Completed"
        REFUSED = "refused", "Refused"

    class Channel(models.TextChoices):
        CONSOLE = "console", "Tenant console"
        API = "api", "Management API"
        STAFF = "staff", "Staff console"

    id = models.UUIDField(primary_key=True, default=uuid.uuid4, editable=False)
    tenant = models.ForeignKey("tenants.Tenant", on_delete=models.PROTECT, related_name="+")
    customer_id = models.CharField(max_length=CUSTOMER_ID_MAX)
    kind = models.CharField(max_length=16, choices=Kind.choices)
    status = models.CharField(max_length=16, choices=Status.choices, default=Status.RECEIVED)
    channel = models.CharField(max_length=16, choices=Channel.choices)
    # For a correction: the id the records move to. Never content.
    new_customer_id = models.CharField(max_length=CUSTOMER_ID_MAX, blank=True)
    note = models.CharField(max_length=500, blank=True, help_text="Your reference, e.g. a ticket number.")
    refusal_reason = models.CharField(max_length=500, blank=True)
    # What was done, by holder: counts only.
    outcome = models.JSONField(default=dict, blank=True)
    received_at = models.DateTimeField(default=timezone.now)
    due_at = models.DateTimeField()
    completed_at = models.DateTimeField(null=True, blank=True)
    opened_by = models.ForeignKey(settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL,
                                  related_name="+")
    opened_by_key = models.CharField(max_length=32, blank=True)

    class Meta:
        ordering = ["-received_at", "-id"]
        indexes = [
            models.Index(fields=["tenant", "-received_at"], name="privreq_tenant_time"),
            models.Index(fields=["tenant", "customer_id"], name="privreq_tenant_customer"),
            models.Index(fields=["status", "due_at"], name="privreq_status_due"),
        ]

    def __str__(self) -> str:
        return f"{self.get_kind_display()} ({self.received_at:%Y-%m-%d})"

    def save(self, *args, **kwargs):
        if self.due_at is None:
            self.due_at = self.received_at + timedelta(days=PRIVACY_REQUEST_DAYS)
        super().save(*args, **kwargs)

    @property
    def is_open(self) -> bool:
        return self.status == self.Status.RECEIVED

    def days_left(self, now=None) -> int:
        return (self.due_at - (now or timezone.now())).days


class CustomerAnnotation(models.Model):
    """An individual's statement kept with what a tenant holds on them (APP 13.4: when a correction is refused,
    the individual may ask that a statement be associated with the information). Exported with it; erased with
    it."""

    tenant = models.ForeignKey("tenants.Tenant", on_delete=models.CASCADE, related_name="+")
    customer_id = models.CharField(max_length=CUSTOMER_ID_MAX, db_index=True)
    text = models.TextField(max_length=2000)
    privacy_request = models.ForeignKey(PrivacyRequest, null=True, on_delete=models.SET_NULL, related_name="+")
    created_at = models.DateTimeField(default=timezone.now)

    class Meta:
        ordering = ["created_at", "id"]
        indexes = [models.Index(fields=["tenant", "customer_id"], name="annotation_tenant_customer")]

    def __str__(self) -> str:
        return f"Statement of {self.created_at:%Y-%m-%d}"


# --- transcript retention (R-RET, docs/privacy.md "Transcript retention") ----------------------------------
class TenantDataKey(models.Model):
    """A tenant's data key, wrapped: by the platform KMS key (``GenerateDataKey`` with the encryption context
    ``{"tenant": <id>}``), or in the embedded default by a local key-wrapping key under the same context. The
    plaintext key is never stored; it lives briefly in the ingest's and readers' memory (``audit.envelope``).

    Off-boarding sets ``destroy_after``: the shredding job deletes the row then, and with it the only copy of the
    key that can decrypt what backups still hold."""

    class Provider(models.TextChoices):
        KMS = "kms", "AWS KMS"
        LOCAL = "local", "Local key-wrapping key"

    id = models.UUIDField(primary_key=True, default=uuid.uuid4, editable=False)
    tenant = models.ForeignKey("tenants.Tenant", on_delete=models.CASCADE, related_name="+")
    provider = models.CharField(max_length=8, choices=Provider.choices)
    wrapping_key = models.CharField(max_length=256, blank=True)  # the KMS key's ARN (or "local:<fingerprint>")
    wrapped = models.BinaryField()
    created_at = models.DateTimeField(default=timezone.now)
    destroy_after = models.DateTimeField(null=True, blank=True)  # scheduled for shredding (off-boarding)

    class Meta:
        ordering = ["-created_at"]
        indexes = [models.Index(fields=["destroy_after"], name="datakey_destroy_after")]

    def __str__(self) -> str:
        return f"Data key {self.id} ({self.provider})"


class Transcript(models.Model):
    """One request's content, or one conversation turn's, kept for the tenant's retention period. ``sealed`` is
    the AES-256-GCM encryption (12-byte nonce, then ciphertext and tag) of ``{"prompt": ..., "reply": ...}`` under
    the tenant's data key, with ``<tenant id>|<row id>`` as associated data: a row's content can't be moved to
    another row or tenant and still decrypt. Everything else here is metadata, which the access records hold
    too."""

    id = models.UUIDField(primary_key=True, default=uuid.uuid4, editable=False)
    tenant = models.ForeignKey("tenants.Tenant", on_delete=models.CASCADE, related_name="+")
    data_key = models.ForeignKey(TenantDataKey, on_delete=models.PROTECT, related_name="+")
    request_id = models.CharField(max_length=128)
    turn = models.PositiveIntegerField(default=0)
    kind = models.CharField(max_length=20, default="request")
    conversation_id = models.CharField(max_length=128, blank=True)
    key_id = models.CharField(max_length=64, blank=True)
    customer_id = models.CharField(max_length=256, blank=True)
    model = models.CharField(max_length=200, blank=True)
    endpoint = models.CharField(max_length=40, blank=True)
    status = models.PositiveSmallIntegerField(default=200)
    # The console member who sent it from the playground (their user id; "" for the API): their own history.
    member = models.CharField(max_length=64, blank=True, default="")
    created_at = models.DateTimeField()
    expires_at = models.DateTimeField()
    sealed = models.BinaryField()

    class Meta:
        ordering = ["-created_at", "-id"]
        constraints = [models.UniqueConstraint(fields=["request_id", "turn"], name="transcript_request_turn")]
        indexes = [
            models.Index(fields=["tenant", "-created_at"], name="transcript_tenant_time"),
            models.Index(fields=["tenant", "customer_id"], name="transcript_tenant_customer"),
            models.Index(fields=["expires_at"], name="transcript_expires"),
            models.Index(fields=["tenant", "member", "conversation_id"], name="transcript_tenant_member"),
        ]

    def __str__(self) -> str:
        return f"Transcript {self.request_id}"


class BreakGlassGrant(models.Model):
    """A staff member's time-limited access to one tenant's transcript content (R-SEC-3): given after a fresh
    re-authentication, with a reason; every read under it is audited."""

    REASON_MAX = 500

    id = models.UUIDField(primary_key=True, default=uuid.uuid4, editable=False)
    user = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.PROTECT, related_name="+")
    tenant = models.ForeignKey("tenants.Tenant", on_delete=models.CASCADE, related_name="+")
    reason = models.CharField(max_length=REASON_MAX)
    created_at = models.DateTimeField(default=timezone.now)
    expires_at = models.DateTimeField()

    class Meta:
        ordering = ["-created_at"]
        indexes = [models.Index(fields=["user", "tenant", "-expires_at"], name="breakglass_user_tenant")]

    def __str__(self) -> str:
        return f"Break-glass {self.created_at:%Y-%m-%d %H:%M}"

    def active(self, now=None) -> bool:
        return self.expires_at > (now or timezone.now())
