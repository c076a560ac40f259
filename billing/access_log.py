"""The access log sealed into the audit chain (R-AUD-1): every inference's record (``billing.UsageEvent``: time,
tenant, key id, end-customer id, model, backend, tokens, latency, outcome, redaction counts, SHA-256 of prompt and
reply, never text) is sealed in batches by digest, so the data plane never waits on the chain.

``access_seal`` takes the committed records not yet sealed, in id (ingest) order, computes one digest over the
batch, and writes ONE audit entry ``access.batch`` (first and last record id, count, digest) through
``audit.services.record``; the records get that entry's id in ``access_batch``. The entry joins the hash chain like
any other, so the chain vouches for the digest and the digest for the rows. ``access_verify`` recomputes every
batch from the rows and names the first whose rows were edited, deleted or added.

Here, in billing, because audit imports nothing it records: billing reads audit, never the other way round.

Canonical record (docs/audit.md): a JSON object of ``FIELDS``, keys sorted, no whitespace, ASCII only
(``json.dumps(sort_keys=True, separators=(",", ":"), ensure_ascii=True, allow_nan=False)``), ``created_at`` as
``YYYY-MM-DDTHH:MM:SS.ffffffZ``, ``tenant_id`` as lowercase dashed UUID text, ``redactions`` as its JSON object
or null. Batch digest: SHA-256 of the records' canonical encodings in id order, each followed by ``\\n``.
"""

from __future__ import annotations

import hashlib
import json
import logging
import time
from collections.abc import Iterable
from dataclasses import dataclass

from django.conf import settings
from django.db import connection, transaction
from django.db.models import Count, F

from audit import chain
from audit.models import AuditEntry
from audit.services import record
from billing.models import UsageEvent
from billing.rollups import committed_max_id

logger = logging.getLogger("wattle.audit")

ACTION = "access.batch"
# A batch legitimately changed after sealing (an individual's erasure or correction, ``billing.personal_data``):
# the entry carries the batch's new digest and count, and verification holds the rows to the latest one.
AMEND_ACTION = "access.amended"
ENCODING = 1  # the canonical encoding's version, recorded in each batch entry
# pg_try_advisory_xact_lock key: one access sealer at a time across every process ("WTLACCES" in ASCII).
ACCESS_SEAL_LOCK = 0x57544C4143434553
FIELDS = (
    "id", "request_id", "tenant_id", "key_id", "customer_id", "endpoint", "model", "backend", "status", "error_code",
    "stream", "client_disconnected", "prompt_tokens", "completion_tokens", "ttft_ms", "duration_ms", "created_at",
    "redactions", "prompt_sha256", "reply_sha256",
)
_CREATED = FIELDS.index("created_at")
_TENANT = FIELDS.index("tenant_id")
_encode = json.JSONEncoder(sort_keys=True, separators=(",", ":"), ensure_ascii=True, allow_nan=False).encode


def canonical(values: tuple) -> bytes:
    """One record's canonical bytes, from its ``FIELDS`` values in order (as the ORM reads them)."""
    row = dict(zip(FIELDS, values, strict=True))
    row["created_at"] = chain.utc_iso(values[_CREATED])
    row["tenant_id"] = chain.uuid_text(values[_TENANT])
    return _encode(row).encode("ascii")


def batch_digest(rows: Iterable[tuple]) -> tuple[str, int]:
    """(SHA-256 hex of the records' canonical lines, how many) for rows in id order."""
    digest = hashlib.sha256()
    count = 0
    for values in rows:
        digest.update(canonical(values))
        digest.update(b"\n")
        count += 1
    return digest.hexdigest(), count


def access_seal(*, batch: int | None = None, max_batches: int | None = None) -> int:
    """Seal the committed, unsealed access records into the chain, ``batch`` at a time (one ``access.batch`` entry
    each); returns how many records it sealed. Each batch is one transaction (the entry and the rows' references
    commit together); one sealer runs at a time (an advisory lock on PostgreSQL; SQLite has one writer)."""
    batch = batch or settings.ACCESS_SEAL_BATCH
    upto = committed_max_id()  # every record up to here is committed: none can join a range once it is sealed
    sealed = 0
    while max_batches is None or max_batches > 0:
        with transaction.atomic():
            if connection.vendor == "postgresql":
                with connection.cursor() as cursor:
                    cursor.execute("SELECT pg_try_advisory_xact_lock(%s)", [ACCESS_SEAL_LOCK])
                    if not cursor.fetchone()[0]:
                        return sealed  # another sealer is at work
            rows = list(UsageEvent.objects.filter(access_batch__isnull=True, id__lte=upto)
                        .order_by("id").values_list(*FIELDS)[:batch])
            if not rows:
                return sealed
            digest, count = batch_digest(rows)
            first, last = rows[0][0], rows[-1][0]
            entry = record(action=ACTION, data={"first_id": first, "last_id": last, "count": count,
                                                "digest": digest, "encoding": ENCODING})
            marked = (UsageEvent.objects.filter(access_batch__isnull=True, id__gte=first, id__lte=last)
                      .update(access_batch=entry.pk))
            if marked != count:  # a record appeared or went mid-batch: seal nothing rather than a wrong digest
                raise RuntimeError(f"access batch {first}-{last}: {marked} records marked, {count} digested")
        sealed += count
        if count < batch:
            return sealed
        if max_batches is not None:
            max_batches -= 1
    return sealed


# Batches one run seals at most: a backlog (the records from before sealing existed, or after a long outage) is
# worked through a bounded slice at a time, so the embedded default's web process is never busy with it for long.
RUN_BATCHES = 20


def access_jobs() -> None:
    """What the beat (``billing.tasks.seal_access_log``) or the embedded billing loop runs."""
    started = time.monotonic()
    count = access_seal(max_batches=RUN_BATCHES)
    if count:
        logger.info("sealed %s access records into the audit chain in %.3fs", count, time.monotonic() - started)


def batch_expected(entry_id: int) -> dict | None:
    """What a sealed batch's rows must hash to now: its ``access.batch`` entry's count and digest, or those of its
    latest ``access.amended`` entry. None when the trail has no such batch."""
    sealed = AuditEntry.objects.filter(action=ACTION, pk=entry_id).values_list("data", flat=True).first()
    if not isinstance(sealed, dict):
        return None
    amendments = AuditEntry.objects.filter(action=AMEND_ACTION, data__batch=entry_id).order_by("-id")
    latest = amendments.values_list("data", flat=True).first()
    return {"count": (latest or sealed).get("count"), "digest": (latest or sealed).get("digest")}


@dataclass(frozen=True)
class AccessVerification:
    batches: int
    records: int
    unsealed: int
    seconds: float
    broken: str | None  # the first broken batch, described; None: every batch matches its rows


def access_verify() -> AccessVerification:
    """Recompute every sealed batch from its rows, in chain order (unchained batch entries last, by id), and name
    the first whose rows no longer match: edited (same count, other digest), deleted or moved out (fewer), added
    or moved in (more). Rows that claim a batch the trail has no entry for are named too. The chain itself (that
    the batch entries are intact) is ``verify_audit``'s."""
    started = time.monotonic()
    entries = (AuditEntry.objects.filter(action=ACTION)
               .order_by(F("seq").asc(nulls_last=True), "id").values_list("id", "seq", "data"))
    batches = records = 0
    broken = None
    amended: dict[int, dict] = {}
    for data in (AuditEntry.objects.filter(action=AMEND_ACTION).order_by("id").values_list("data", flat=True)
                 .iterator(chunk_size=500)):
        if isinstance(data, dict) and isinstance(data.get("batch"), int):
            amended[data["batch"]] = data  # the latest amendment of each batch wins
    for entry_id, seq, data in entries.iterator(chunk_size=500):
        data = {**data, **{k: amended[entry_id][k] for k in ("count", "digest") if k in amended.get(entry_id, {})}}
        rows = (UsageEvent.objects.filter(access_batch=entry_id).order_by("id").values_list(*FIELDS)
                .iterator(chunk_size=2000))
        digest, count = batch_digest(rows)
        name = (f"access batch {entry_id} (audit seq {seq if seq is not None else 'pending'}, records "
                f"{data.get('first_id')}-{data.get('last_id')})")
        if count < data.get("count", -1):
            broken = f"{name}: {data['count'] - count} of its {data['count']} records deleted or moved out"
        elif count > data.get("count", -1):
            broken = f"{name}: {count - data['count']} records added or moved in"
        elif digest != data.get("digest"):
            broken = f"{name}: a record was edited: its rows no longer match the sealed digest"
        if broken:
            break
        batches += 1
        records += count
    if broken is None:
        orphans = (UsageEvent.objects.filter(access_batch__isnull=False)
                   .exclude(access_batch__in=AuditEntry.objects.filter(action=ACTION).values("id"))
                   .values("access_batch").annotate(n=Count("id")).order_by("access_batch").first())
        if orphans:
            broken = (f"access batch {orphans['access_batch']}: {orphans['n']} records claim a batch the audit "
                      "trail has no entry for")
    unsealed = UsageEvent.objects.filter(access_batch__isnull=True).count()
    return AccessVerification(batches=batches, records=records, unsealed=unsealed,
                              seconds=time.monotonic() - started, broken=broken)

