"""The access records' part of individuals' requests (``audit.personal_data``): what the access log holds under a
tenant's end-customer id, its copy, its correction and its erasure.

The access log holds no text, only metadata; erasure de-identifies it (the id becomes ``ERASED``, which no caller
can send: ``~`` is not allowed in a customer id) rather than deleting it, because the same rows are the bill.

Sealed rows (``billing.access_log``) are part of the tamper-evident trail, so an erasure or a correction that
changes them records, in the same transaction, one ``access.amended`` audit entry per batch it touched, with the
batch's new digest and the request that changed it; ``access_verify`` accepts a batch whose rows match its
latest recorded amendment. An edit that did not come through here still fails verification. The amendment takes
the access sealer's lock, so no batch is sealed from rows half-changed.
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Iterator

from django.db import connection, transaction

from audit.chain import uuid_text
from audit.personal_data import Holder, register
from audit.services import record
from billing.access_log import ACCESS_SEAL_LOCK, AMEND_ACTION, ENCODING, FIELDS, batch_expected, canonical
from billing.models import UsageEvent

logger = logging.getLogger("wattle.audit")

ERASED = "~erased"
_CUSTOMER = FIELDS.index("customer_id")
_TENANT = FIELDS.index("tenant_id")
_EXPORTED = ("request_id", "created_at", "key_id", "endpoint", "model", "backend", "status", "error_code",
             "stream", "prompt_tokens", "completion_tokens", "ttft_ms", "duration_ms", "redactions",
             "prompt_sha256", "reply_sha256")


def _rows(tenant_id: str, customer_id: str):
    return UsageEvent.objects.filter(tenant_id=tenant_id, customer_id=customer_id)


def access_records_export(tenant_id: str, customer_id: str) -> Iterator[dict]:
    """Read in chunks as the copy is written out: a busy customer id can hold millions of records."""
    rows = _rows(tenant_id, customer_id).order_by("created_at", "id").values(*_EXPORTED)
    for row in rows.iterator(chunk_size=2000):
        yield {**row, "created_at": row["created_at"].isoformat()}


def access_records_count(tenant_id: str, customer_id: str) -> int:
    return _rows(tenant_id, customer_id).count()


def _change_customer(tenant_id: str, customer_id: str, new_value: str, reason: str) -> int:
    with transaction.atomic():
        if connection.vendor == "postgresql":
            with connection.cursor() as cursor:  # wait for a sealer at work, and keep it out until we commit
                cursor.execute("SELECT pg_advisory_xact_lock(%s)", [ACCESS_SEAL_LOCK])
        rows = _rows(tenant_id, customer_id)
        batches = sorted(set(rows.exclude(access_batch__isnull=True).values_list("access_batch", flat=True)))
        amended = {batch: _amended_digest(batch, tenant_id, customer_id, new_value) for batch in batches}
        changed = rows.update(customer_id=new_value)
        for batch, amendment in amended.items():
            if amendment is None:
                continue
            digest, count = amendment
            record(action=AMEND_ACTION, data={"batch": batch, "digest": digest, "count": count, "reason": reason,
                                              "encoding": ENCODING})
    return changed


def _batch_rows(batch: int):
    return UsageEvent.objects.filter(access_batch=batch).order_by("id").values_list(*FIELDS).iterator(chunk_size=2000)


def _amended_digest(batch: int, tenant_id: str, customer_id: str, new_value: str) -> tuple[str, int] | None:
    """The batch's digest and count once the customer's rows carry ``new_value``, from one read of its rows; or
    None when the rows no longer match the trail now. An amendment vouches for the whole batch: one recorded over
    rows already edited outside a request would make that edit pass verification, so such a batch is not amended
    and stays broken for ``access_verify`` to name (the individual's request is still carried out)."""
    expected = batch_expected(batch)
    tenant = uuid_text(tenant_id)
    before, after, count = hashlib.sha256(), hashlib.sha256(), 0
    for values in _batch_rows(batch):
        line = canonical(values)
        before.update(line)
        before.update(b"\n")
        if values[_CUSTOMER] == customer_id and uuid_text(values[_TENANT]) == tenant:
            line = canonical((*values[:_CUSTOMER], new_value, *values[_CUSTOMER + 1:]))
        after.update(line)
        after.update(b"\n")
        count += 1
    if expected is None or (before.hexdigest(), count) != (expected["digest"], expected["count"]):
        logger.error("access batch %s no longer matches the audit trail: not amended by an individual's request",
                     batch)
        return None
    return after.hexdigest(), count


def access_records_erase(tenant_id: str, customer_id: str) -> int:
    return _change_customer(tenant_id, customer_id, ERASED, "privacy_request.erase")


def access_records_rekey(tenant_id: str, customer_id: str, new_customer_id: str) -> int:
    return _change_customer(tenant_id, customer_id, new_customer_id, "privacy_request.correct")


def register_holder() -> None:
    register(Holder(
        name="access_log",
        description="One record per API request made for this customer: time, key, model, tokens, outcome, "
                    "redaction counts and SHA-256 digests of the prompt and reply (never their text).",
        export=access_records_export, erase=access_records_erase, rekey=access_records_rekey,
        count=access_records_count, models=("billing.usageevent",)))
