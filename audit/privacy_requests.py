"""Individuals' requests (APP 12 access, APP 13 correction; R-DSR-1, R-DSR-2): what a tenant's end customer may
ask of what the tenant holds on them through Wattle, keyed by the tenant's own end-customer id.

A request is opened (received, due in 30 days), then carried out or refused; each step is audited, and the
request stays on record afterwards. Carrying it out asks every registered holder (``audit.personal_data``):

- access: one JSON document with every record held (access-log metadata, conversations and their analyses,
  transcripts when retention keeps them, annotations), free, generated when asked for;
- correction: the records move from the wrong customer id to the right one;
- annotation: the individual's statement is kept with the records and exported with them;
- erasure: content is deleted and what must stay (access-log metadata, billing) is de-identified.

The audit entries name the request and the counts, never the customer id itself beyond its keyed digest, and
never content.
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Iterator

from django.conf import settings
from django.core.exceptions import ValidationError
from django.core.serializers.json import DjangoJSONEncoder
from django.db import transaction
from django.db.models import Case, F, Q, QuerySet, Value, When
from django.utils import timezone

from audit import personal_data
from audit.models import CustomerAnnotation, PrivacyRequest
from audit.services import record
from core import ccaas

ANNOTATION_MAX = 2000
EXPORT_VERSION = 1


def customer_digest(tenant_id: str, customer_id: str) -> str:
    """A keyed digest of an end-customer id for audit entries: the same customer gives the same digest within a
    tenant (so a trail can be followed), and the id cannot be read back from it."""
    key = hmac.new(settings.SECRET_KEY.encode(), b"wattle-customer-digest", hashlib.sha256).digest()
    return hmac.new(key, f"{tenant_id}:{customer_id}".encode(), hashlib.sha256).hexdigest()[:32]


def valid_customer_id(value: object, field: str = "customer_id") -> str:
    try:
        context = ccaas.context(customer_id=value)
    except ccaas.Invalid as exc:
        raise ValidationError({field: str(exc)}) from None
    if not context.customer_id:
        raise ValidationError({field: "Give the end-customer id the request is about."})
    return context.customer_id


def privacy_request_open(*, tenant, customer_id: object, kind: str, channel: str, actor=None, request=None,
                         api_key_id: str = "", new_customer_id: object = None, note: str = "") -> PrivacyRequest:
    """Record a request as received; due in 30 days. Raises ``ValidationError`` for a bad id or kind."""
    if kind not in PrivacyRequest.Kind.values:
        raise ValidationError({"kind": f"`kind` must be one of {', '.join(PrivacyRequest.Kind.values)}."})
    if channel not in PrivacyRequest.Channel.values:
        raise ValidationError({"channel": "Unknown channel."})
    customer_id = valid_customer_id(customer_id)
    target = ""
    if kind == PrivacyRequest.Kind.CORRECT:
        target = valid_customer_id(new_customer_id, "new_customer_id")
        if target == customer_id:
            raise ValidationError({"new_customer_id": "The corrected id must differ from the current one."})
    elif new_customer_id not in (None, ""):
        raise ValidationError({"new_customer_id": "Only a correction moves records to another id."})
    note = str(note or "").strip()
    if len(note) > 500:
        raise ValidationError({"note": "A reference is at most 500 characters."})
    with transaction.atomic():
        privacy_request = PrivacyRequest.objects.create(
            tenant=tenant, customer_id=customer_id, kind=kind, channel=channel, new_customer_id=target,
            note=note, opened_by=actor if getattr(actor, "is_authenticated", False) else None,
            opened_by_key=str(api_key_id or "")[:32])
        record(action="privacy_request.received", actor=actor, tenant=tenant, target=privacy_request,
               request=request, data={"kind": kind, "channel": channel,
                                      "customer": customer_digest(str(tenant.pk), customer_id),
                                      "due_at": privacy_request.due_at.isoformat()})
    return privacy_request


def open_first(requests: QuerySet[PrivacyRequest]) -> QuerySet[PrivacyRequest]:
    """Open requests first, the soonest due at the top, then the done ones, newest first: the lists show a page,
    and an open request (its 30 days running) must never fall behind done ones (by status name, "completed" sorts
    before "received")."""
    is_open = Q(status=PrivacyRequest.Status.RECEIVED)
    return requests.order_by(Case(When(is_open, then=Value(0)), default=Value(1)),
                             Case(When(is_open, then=F("due_at"))), "-received_at", "-pk")


def _lock(privacy_request: PrivacyRequest) -> None:
    """Hold the request's row for the transaction and read its status again: two carry-outs at once (a double
    submit, two people) each hold the request as it was when their page loaded, and the second must see it done.
    Call inside ``transaction.atomic``."""
    status = (PrivacyRequest.objects.select_for_update().filter(pk=privacy_request.pk)
              .values_list("status", flat=True).first())
    if status is not None:
        privacy_request.status = status


def _require_open(privacy_request: PrivacyRequest, *, lock: bool = True) -> None:
    if lock:
        _lock(privacy_request)
    if not privacy_request.is_open:
        raise ValidationError(f"This request is already {privacy_request.get_status_display().lower()}.")


def _complete(privacy_request: PrivacyRequest, *, outcome: dict, action: str, actor, request) -> PrivacyRequest:
    privacy_request.status = PrivacyRequest.Status.COMPLETED
    privacy_request.completed_at = timezone.now()
    privacy_request.outcome = outcome
    privacy_request.save(update_fields=["status", "completed_at", "outcome"])
    record(action=action, actor=actor, tenant=privacy_request.tenant, target=privacy_request, request=request,
           data={"kind": privacy_request.kind, "outcome": outcome,
                 "customer": customer_digest(str(privacy_request.tenant_id), privacy_request.customer_id)})
    return privacy_request


def export_document(privacy_request: PrivacyRequest) -> dict:
    """Everything held about the request's customer in its tenant, as one JSON-serialisable document."""
    head, sections, tail = _document_parts(privacy_request)
    return {**head, "holdings": {name: list(records) for name, records in sections}, **tail}


def _annotations(tenant_id: str, customer_id: str):
    for note in CustomerAnnotation.objects.filter(tenant_id=tenant_id, customer_id=customer_id).order_by("pk"):
        yield {"text": note.text, "created_at": note.created_at.isoformat()}


def _document_parts(privacy_request: PrivacyRequest):
    """The document's fields before ``holdings``, its sections as (name, records iterable), and the fields after:
    the records are read as they are written out, never all at once."""
    tenant_id, customer_id = str(privacy_request.tenant_id), privacy_request.customer_id
    head = {"version": EXPORT_VERSION, "tenant": tenant_id, "customer_id": customer_id,
            "generated_at": timezone.now().isoformat(), "privacy_request": str(privacy_request.pk)}
    sections = [(holder.name, holder.export(tenant_id, customer_id)) for holder in personal_data.holders()]
    sections.append(("annotations", _annotations(tenant_id, customer_id)))
    tail = {
        "sections": {holder.name: holder.description for holder in personal_data.holders()},
        "requests": [
            {"id": str(other.pk), "kind": other.kind, "status": other.status,
             "received_at": other.received_at.isoformat(),
             "completed_at": other.completed_at.isoformat() if other.completed_at else None}
            for other in PrivacyRequest.objects.filter(tenant_id=tenant_id, customer_id=customer_id)
        ],
    }
    return head, sections, tail


# How much of the document one chunk of a download holds: a customer may have millions of access records, and
# the copy is written out as it is read, so memory stays at about a chunk whatever they hold.
CHUNK_BYTES = 64 * 1024


def export_chunks(privacy_request: PrivacyRequest) -> Iterator[bytes]:
    """The same document as ``export_document``, as JSON bytes in chunks, reading each holder's records lazily."""
    encode = DjangoJSONEncoder().encode
    head, sections, tail = _document_parts(privacy_request)
    buffer: list[str] = [encode(head)[:-1], ', "holdings": {']
    size = 0
    for index, (name, records) in enumerate(sections):
        buffer.append(f'{", " if index else ""}{encode(name)}: [')
        for count, item in enumerate(records):
            text = (", " if count else "") + encode(item)
            buffer.append(text)
            size += len(text)
            if size >= CHUNK_BYTES:
                yield "".join(buffer).encode()
                buffer, size = [], 0
        buffer.append("]")
    buffer.append("}, " + encode(tail)[1:])
    yield "".join(buffer).encode()


def _counts(tenant_id: str, customer_id: str) -> dict[str, int]:
    counts = {holder.name: holder.count(tenant_id, customer_id) if holder.count is not None
              else sum(1 for _ in holder.export(tenant_id, customer_id)) for holder in personal_data.holders()}
    counts["annotations"] = CustomerAnnotation.objects.filter(tenant_id=tenant_id, customer_id=customer_id).count()
    return counts


def privacy_request_export(*, privacy_request: PrivacyRequest, actor=None, request=None,
                           stream: bool = False) -> dict | Iterator[bytes]:
    """Carry out an access request: the document, and the request completed (a later download of the same
    request produces the document again and is audited again, as an export). ``stream``: the document as JSON
    chunks (``export_chunks``, read as they are sent; what the consoles and the API download), the outcome's
    counts taken by count."""
    if privacy_request.kind != PrivacyRequest.Kind.ACCESS:
        raise ValidationError("Only an access request produces a copy of the records.")
    with transaction.atomic():
        _lock(privacy_request)
        if privacy_request.status == PrivacyRequest.Status.REFUSED:
            raise ValidationError("This request was refused.")
        if stream:
            document = export_chunks(privacy_request)
            outcome = _counts(str(privacy_request.tenant_id), privacy_request.customer_id)
        else:
            document = export_document(privacy_request)
            outcome = {name: len(records) for name, records in document["holdings"].items()}
        if privacy_request.is_open:
            _complete(privacy_request, outcome=outcome, action="privacy_request.exported", actor=actor,
                      request=request)
        else:
            record(action="privacy_request.exported", actor=actor, tenant=privacy_request.tenant,
                   target=privacy_request, request=request, data={"kind": privacy_request.kind, "outcome": outcome,
                                                                  "again": True})
    return document


def privacy_request_erase(*, privacy_request: PrivacyRequest, actor=None, request=None) -> PrivacyRequest:
    if privacy_request.kind != PrivacyRequest.Kind.ERASE:
        raise ValidationError("This is not an erasure request.")
    tenant_id, customer_id = str(privacy_request.tenant_id), privacy_request.customer_id
    with transaction.atomic():
        _require_open(privacy_request)
        outcome = {holder.name: holder.erase(tenant_id, customer_id) for holder in personal_data.holders()}
        annotations = CustomerAnnotation.objects.filter(tenant_id=tenant_id, customer_id=customer_id)
        outcome["annotations"] = annotations.delete()[0]
        return _complete(privacy_request, outcome=outcome, action="privacy_request.erased", actor=actor,
                         request=request)


def privacy_request_correct(*, privacy_request: PrivacyRequest, actor=None, request=None) -> PrivacyRequest:
    if privacy_request.kind != PrivacyRequest.Kind.CORRECT:
        raise ValidationError("This is not a correction request.")
    tenant_id = str(privacy_request.tenant_id)
    old, new = privacy_request.customer_id, privacy_request.new_customer_id
    with transaction.atomic():
        _require_open(privacy_request)
        outcome = {holder.name: holder.rekey(tenant_id, old, new) for holder in personal_data.holders()}
        outcome["annotations"] = CustomerAnnotation.objects.filter(
            tenant_id=tenant_id, customer_id=old).update(customer_id=new)
        return _complete(privacy_request, outcome=outcome, action="privacy_request.corrected", actor=actor,
                         request=request)


def privacy_request_annotate(*, privacy_request: PrivacyRequest, text: object, actor=None,
                             request=None) -> PrivacyRequest:
    if privacy_request.kind != PrivacyRequest.Kind.ANNOTATE:
        raise ValidationError("This is not an annotation request.")
    _require_open(privacy_request, lock=False)
    text = str(text or "").strip() if isinstance(text, str) else ""
    if not text:
        raise ValidationError({"text": "Write the statement to keep with the records."})
    if len(text) > ANNOTATION_MAX:
        raise ValidationError({"text": f"A statement is at most {ANNOTATION_MAX} characters."})
    with transaction.atomic():
        _require_open(privacy_request)
        CustomerAnnotation.objects.create(tenant_id=privacy_request.tenant_id,
                                          customer_id=privacy_request.customer_id, text=text,
                                          privacy_request=privacy_request)
        return _complete(privacy_request, outcome={"annotations": 1}, action="privacy_request.annotated",
                         actor=actor, request=request)


def privacy_request_refuse(*, privacy_request: PrivacyRequest, reason: object, actor=None,
                           request=None) -> PrivacyRequest:
    """APP 12.9 / 13.3: a refusal gives its reasons in writing; they are kept with the request."""
    _require_open(privacy_request, lock=False)
    reason = reason.strip() if isinstance(reason, str) else ""
    if not reason:
        raise ValidationError({"reason": "Give the reason for refusing, as the individual will be told it."})
    if len(reason) > 500:
        raise ValidationError({"reason": "A reason is at most 500 characters."})
    with transaction.atomic():
        _require_open(privacy_request)
        privacy_request.status = PrivacyRequest.Status.REFUSED
        privacy_request.refusal_reason = reason
        privacy_request.completed_at = timezone.now()
        privacy_request.save(update_fields=["status", "refusal_reason", "completed_at"])
        record(action="privacy_request.refused", actor=actor, tenant=privacy_request.tenant,
               target=privacy_request, request=request, data={"kind": privacy_request.kind})
    return privacy_request


def privacy_request_carry_out(*, privacy_request: PrivacyRequest, actor=None, request=None,
                              text: object = None, stream: bool = False) -> dict | Iterator[bytes] | PrivacyRequest:
    """One entry point for the consoles and the API: the document for an access request (its JSON chunks with
    ``stream``), else the request."""
    kind = privacy_request.kind
    if kind == PrivacyRequest.Kind.ACCESS:
        return privacy_request_export(privacy_request=privacy_request, actor=actor, request=request, stream=stream)
    if kind == PrivacyRequest.Kind.ERASE:
        return privacy_request_erase(privacy_request=privacy_request, actor=actor, request=request)
    if kind == PrivacyRequest.Kind.CORRECT:
        return privacy_request_correct(privacy_request=privacy_request, actor=actor, request=request)
    return privacy_request_annotate(privacy_request=privacy_request, text=text, actor=actor, request=request)
