"""The breach register's changes (NDB scheme): open, update, decide, close, notify tenants.

Each runs in one transaction with its audit entry. Tenants arrive as model instances from the caller (the staff
pages in ``billing.staff_incidents``): audit imports nothing it records, so who a tenant's contacts are is the
caller's read, not ours.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING, Any

from django.conf import settings
from django.core.exceptions import ValidationError
from django.core.mail import EmailMultiAlternatives, get_connection
from django.db import transaction
from django.template.loader import render_to_string
from django.utils import timezone

from audit.models import Incident, IncidentNotification
from audit.services import record
from core.mail import branded_html

if TYPE_CHECKING:
    from django.contrib.auth.models import AbstractBaseUser
    from django.http import HttpRequest

SCOPE_FIELDS = ("window_start", "window_end", "key_id", "backend", "component")
EDITABLE_FIELDS = ("title", "summary", "became_aware_at", *SCOPE_FIELDS)


def _validate(fields: dict[str, Any]) -> None:
    errors: dict[str, str] = {}
    if not (fields.get("title") or "").strip():
        errors["title"] = "Say in a few words what happened."
    if not (fields.get("summary") or "").strip():
        errors["summary"] = "Describe what is known so far."
    aware = fields.get("became_aware_at")
    if aware is None:
        errors["became_aware_at"] = "When did we become aware of it? The 30-day assessment clock starts then."
    elif aware > timezone.now():
        errors["became_aware_at"] = "We cannot become aware of something in the future."
    start, end = fields.get("window_start"), fields.get("window_end")
    if start and end and start >= end:
        errors["window_end"] = "The window must end after it starts."
    if errors:
        raise ValidationError(errors)


def _scope(incident: Incident) -> dict[str, str]:
    return {name: (v.isoformat() if isinstance(v, datetime) else v) for name in SCOPE_FIELDS
            if (v := getattr(incident, name))}


@transaction.atomic
def incident_open(
    *,
    actor: AbstractBaseUser,
    title: str,
    summary: str,
    became_aware_at: datetime,
    window_start: datetime | None = None,
    window_end: datetime | None = None,
    key_id: str = "",
    backend: str = "",
    component: str = "",
    request: HttpRequest | None = None,
) -> Incident:
    fields = {"title": title, "summary": summary, "became_aware_at": became_aware_at, "window_start": window_start,
              "window_end": window_end, "key_id": key_id.strip(), "backend": backend.strip(),
              "component": component.strip()}
    _validate(fields)
    incident = Incident.objects.create(opened_by=actor, **fields)
    record(action="incident.opened", actor=actor, target=incident, request=request,
           data={"title": incident.title, "became_aware_at": became_aware_at.isoformat(),
                 "assessment_due_at": incident.assessment_due_at.isoformat(), **_scope(incident)})
    return incident


def _locked_open(incident: Incident) -> Incident:
    locked = Incident.objects.select_for_update().get(pk=incident.pk)
    if locked.status == Incident.Status.CLOSED:
        raise ValidationError("This incident is closed; open a new one for anything further.")
    return locked


@transaction.atomic
def incident_update(
    *, incident: Incident, actor: AbstractBaseUser, changes: dict[str, Any], request: HttpRequest | None = None
) -> Incident:
    """Change what is known (``changes`` holds any of ``EDITABLE_FIELDS``). A closed incident stays as closed."""
    unknown = set(changes) - set(EDITABLE_FIELDS)
    if unknown:
        raise ValidationError(f"Cannot change {', '.join(sorted(unknown))}.")
    locked = _locked_open(incident)
    fields = {name: getattr(locked, name) for name in EDITABLE_FIELDS} | changes
    _validate(fields)
    changed = sorted(name for name in EDITABLE_FIELDS if fields[name] != getattr(locked, name))
    for name in changed:
        setattr(locked, name, fields[name])
    if changed:
        locked.save()
        record(action="incident.updated", actor=actor, target=locked, request=request,
               data={"changed": changed, **_scope(locked)})
    return locked


@transaction.atomic
def incident_decide(
    *, incident: Incident, actor: AbstractBaseUser, decision: str, reasons: str, request: HttpRequest | None = None
) -> Incident:
    """Record whether it is an eligible data breach, with the reasons (the NDB assessment's outcome)."""
    if decision not in Incident.Decision.values:
        raise ValidationError({"decision": "Choose eligible or not eligible."})
    if not reasons.strip():
        raise ValidationError({"reasons": "Give the reasons for the decision: the assessment must show its basis."})
    locked = _locked_open(incident)
    locked.decision, locked.decision_reasons = decision, reasons.strip()
    locked.decided_at, locked.status = timezone.now(), Incident.Status.DECIDED
    locked.save()
    record(action="incident.decided", actor=actor, target=locked, request=request,
           data={"decision": decision, "within_assessment_period": locked.decided_at <= locked.assessment_due_at})
    return locked


@transaction.atomic
def incident_close(*, incident: Incident, actor: AbstractBaseUser, request: HttpRequest | None = None) -> Incident:
    """Close an incident: refused until an eligible / not-eligible decision with reasons is recorded."""
    locked = _locked_open(incident)
    if not locked.decision or not locked.decision_reasons:
        raise ValidationError("Decide whether this is an eligible data breach, with reasons, before closing it.")
    locked.status, locked.closed_at = Incident.Status.CLOSED, timezone.now()
    locked.save()
    record(action="incident.closed", actor=actor, target=locked, request=request,
           data={"decision": locked.decision})
    return locked


@dataclass(frozen=True)
class Notice:
    """One tenant's notice, as it would be sent: the preview staff read before sending is this."""

    tenant: Any
    recipients: list[str]
    subject: str
    body: str


def incident_notice(*, incident: Incident, tenant: Any, recipients: list[str], key_ids: list[str]) -> Notice:
    """Render the templated notice for ``tenant`` (``templates/audit/email/incident_notice_*.txt``)."""
    context = {"incident": incident, "tenant": tenant, "key_ids": key_ids, "site_name": settings.WATTLE_SITE_NAME}
    subject = " ".join(render_to_string("audit/email/incident_notice_subject.txt", context).split())
    body = render_to_string("audit/email/incident_notice_body.txt", context)
    return Notice(tenant=tenant, recipients=sorted(set(recipients)), subject=subject[:200], body=body)


@transaction.atomic
def incident_notify(
    *, incident: Incident, notices: list[Notice], actor: AbstractBaseUser, request: HttpRequest | None = None
) -> list[IncidentNotification]:
    """Send each notice and keep a record and an audit entry per tenant. The emails leave after the commit, so
    a rollback sends nothing; a tenant with no recipient is refused rather than silently skipped."""
    if not notices:
        raise ValidationError("Choose at least one tenant to notify.")
    empty = [str(n.tenant) for n in notices if not n.recipients]
    if empty:
        raise ValidationError(f"No billing email or owner to write to for: {', '.join(empty)}.")
    locked = Incident.objects.select_for_update().get(pk=incident.pk)
    sent = []
    for notice in notices:
        notification = IncidentNotification.objects.create(
            incident=locked, tenant=notice.tenant, recipients=notice.recipients, subject=notice.subject,
            body=notice.body, sent_by=actor,
        )
        record(action="incident.tenant_notified", actor=actor, tenant=notice.tenant, target=locked,
               request=request, data={"notification": notification.pk, "recipients": len(notice.recipients)})
        sent.append(notification)
    messages = [(n.subject, n.body, settings.DEFAULT_FROM_EMAIL, n.recipients) for n in notices]
    transaction.on_commit(lambda: _send_branded(messages))
    return sent


def _send_branded(messages: list[tuple[str, str, str, list[str]]]) -> None:
    """The notices over one connection, each with the brand's HTML part beside its text."""
    built = []
    for subject, body, sender, to in messages:
        message = EmailMultiAlternatives(subject, body, sender, to)
        message.attach_alternative(branded_html(body, subject=subject, site_name=settings.WATTLE_SITE_NAME,
                                                site_url=settings.WATTLE_BASE_URL), "text/html")
        built.append(message)
    get_connection().send_messages(built)
