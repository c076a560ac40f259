"""Sealed segments of the audit chain, shipped off the database (R-AUD-3, docs/audit.md "Archive").

A segment is every sealed entry after the last segment, as JSON lines: each line an entry's canonical encoding
(``audit.chain``) with its ``prev_hash`` and ``hash`` added, so the file can be verified on its own. It goes to
S3 in ap-southeast-2 with SSE-KMS and an Object Lock in COMPLIANCE mode (nobody, the root account included, can
delete or overwrite it before the retain-until date), or, with no bucket configured (the embedded default), to a
read-only file under ``AUDIT_ARCHIVE_DIR``. Then an ``audit.segment.sealed`` entry records the segment's SHA-256
digest, seq range and object key into the chain itself: editing the archive breaks the digest, editing the
database breaks the chain, and the two vouch for each other.

Audit entries hold identifiers and settings, never end-customer content, so a WORM bucket is right for them
(content must stay deletable and never goes there).
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
from dataclasses import dataclass
from datetime import timedelta

from django.conf import settings
from django.db import connection, transaction
from django.utils import timezone

from audit import chain
from audit.models import AuditEntry
from audit.services import record

REGION = "ap-southeast-2"  # R-AUD-3: the archive lives in Sydney, whatever else is configured
# R-AUD-3: segments ship at least every 5 minutes; a longer AUDIT_ARCHIVE_SEGMENT_S is held to this.
MAX_SEGMENT_S = 300
SEGMENT_ACTION = "audit.segment.sealed"
SEGMENT_MAX_ENTRIES = 100_000  # a backlog (the first run after the chain existed) ships in several segments
AUDIT_SEGMENT_LOCK = 0x57544C5345474D54  # one archiver at a time ("WTLSEGMT")

_encode = json.JSONEncoder(sort_keys=True, separators=(",", ":"), ensure_ascii=True, allow_nan=False).encode


@dataclass(frozen=True)
class Segment:
    first_seq: int
    last_seq: int
    count: int
    sha256: str
    key: str
    store: str  # "s3://bucket" or "file"


def segment_lines(first_seq: int, last_seq: int) -> bytes:
    """The segment's bytes: one line per entry, in seq order."""
    columns = ", ".join(chain.FIELDS)
    lines = []
    with connection.cursor() as cursor:
        cursor.execute(
            f"SELECT {columns}, prev_hash, hash FROM audit_auditentry "  # noqa: S608 (constant columns)
            "WHERE seq >= %s AND seq <= %s ORDER BY seq",
            [first_seq, last_seq],
        )
        for values in cursor.fetchall():
            doc = json.loads(chain.canonical(dict(zip(chain.FIELDS, values[:15], strict=True))))
            doc["prev_hash"], doc["hash"] = values[15], values[16]
            lines.append(_encode(doc))
    return ("\n".join(lines) + "\n").encode("ascii")


def _last_archived_seq() -> tuple[int, timezone.datetime | None]:
    last = AuditEntry.objects.filter(action=SEGMENT_ACTION).order_by("-id").values("data", "created_at").first()
    if last is None:
        return 0, None
    return int(last["data"]["last_seq"]), last["created_at"]


def _head_seq() -> int:
    with connection.cursor() as cursor:
        cursor.execute("SELECT COALESCE(MAX(seq), 0) FROM audit_auditentry")
        return int(cursor.fetchone()[0])


def segment_key(first_seq: int, last_seq: int) -> str:
    return f"audit/segments/{first_seq:012d}-{last_seq:012d}.jsonl"


def _s3_client():
    import boto3

    return boto3.client("s3", region_name=REGION, endpoint_url=getattr(settings, "AWS_ENDPOINT_URL", None))


def _ship(key: str, body: bytes) -> str:
    bucket = settings.AUDIT_ARCHIVE_BUCKET
    if bucket:
        retain_until = timezone.now() + timedelta(days=settings.AUDIT_ARCHIVE_RETENTION_DAYS)
        _s3_client().put_object(
            Bucket=bucket, Key=key, Body=body, ContentType="application/x-ndjson",
            # Object Lock puts must carry an integrity header; MD5 is what S3 asks for here, not a security hash.
            ContentMD5=base64.b64encode(hashlib.md5(body).digest()).decode(),  # noqa: S324
            ServerSideEncryption="aws:kms", SSEKMSKeyId=settings.AUDIT_ARCHIVE_KMS_KEY_ID,
            ObjectLockMode="COMPLIANCE", ObjectLockRetainUntilDate=retain_until,
        )
        return f"s3://{bucket}"
    path = settings.AUDIT_ARCHIVE_DIR / key
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_suffix(".partial")
    partial.write_bytes(body)
    os.chmod(partial, 0o444)
    partial.replace(path)  # never a half-written segment under its final name
    return "file"


def newest_archived() -> tuple[int, str] | None:
    """The seq and hash of the newest entry in the archive (the last line of the segment with the highest key;
    keys are zero-padded seq ranges), or None before the first segment. ``verify_audit`` holds the database to it:
    entries deleted from the end of the chain leave a chain that is whole by itself."""
    prefix = "audit/segments/"
    bucket = settings.AUDIT_ARCHIVE_BUCKET
    if bucket:
        s3 = _s3_client()
        newest = ""
        for page in s3.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix):
            keys = [item["Key"] for item in page.get("Contents", ()) if item["Key"].endswith(".jsonl")]
            newest = max([newest, *keys])
        if not newest:
            return None
        body = s3.get_object(Bucket=bucket, Key=newest)["Body"].read()
    else:
        folder = settings.AUDIT_ARCHIVE_DIR / prefix
        paths = sorted(folder.glob("*.jsonl")) if folder.is_dir() else []
        if not paths:
            return None
        body = paths[-1].read_bytes()
    last = json.loads(body.rstrip(b"\n").rsplit(b"\n", 1)[-1])
    return int(last["seq"]), str(last["hash"])


def check_archived_end() -> str | None:
    """The first broken link that only the archive shows, or None: the newest archived entry must still be in the
    database with the hash it was archived with. Deleting the newest entries (their sealing and archive records
    with them) leaves a chain that verifies by itself, and so does deleting them and chaining new entries in
    their place; neither survives this comparison."""
    newest = newest_archived()
    if newest is None:
        return None
    seq, digest = newest
    with connection.cursor() as cursor:
        cursor.execute("SELECT id, hash FROM audit_auditentry WHERE seq = %s", [seq])
        row = cursor.fetchone()
    if row is None:
        return f"seq {seq}: archived, but no longer in the database: the end of the chain was deleted"
    if row[1] != digest:
        return (f"seq {seq} (id {row[0]}): differs from its archived copy: the end of the chain was deleted "
                "and chained again")
    return None


def segment_seal(*, force: bool = False) -> Segment | None:
    """Ship the entries sealed since the last segment, if the last is older than ``AUDIT_ARCHIVE_SEGMENT_S``
    (or ``force``), and record the segment into the chain. None when nothing is due.

    The upload happens before the recording entry commits: a crash in between re-ships the same seq range under
    the same key next time (an S3 version, or the same file), never a gap."""
    if connection.vendor == "postgresql":
        with connection.cursor() as cursor:
            cursor.execute("SELECT pg_try_advisory_lock(%s)", [AUDIT_SEGMENT_LOCK])
            if not cursor.fetchone()[0]:
                return None
    try:
        last_seq, last_at = _last_archived_seq()
        if not force and last_at is not None and (
            timezone.now() - last_at < timedelta(seconds=min(settings.AUDIT_ARCHIVE_SEGMENT_S, MAX_SEGMENT_S))
        ):
            return None
        head = _head_seq()
        # The last segment's own entry alone is no reason to cut another segment.
        if head <= last_seq + (1 if last_at is not None else 0):
            return None
        first = last_seq + 1
        last = min(head, last_seq + SEGMENT_MAX_ENTRIES)
        body = segment_lines(first, last)
        key = segment_key(first, last)
        store = _ship(key, body)
        segment = Segment(first_seq=first, last_seq=last, count=last - first + 1,
                          sha256=hashlib.sha256(body).hexdigest(), key=key, store=store)
        with transaction.atomic():
            record(action=SEGMENT_ACTION, data={
                "first_seq": segment.first_seq, "last_seq": segment.last_seq, "count": segment.count,
                "sha256": segment.sha256, "key": segment.key, "store": segment.store,
            })
        return segment
    finally:
        if connection.vendor == "postgresql":
            with connection.cursor() as cursor:
                cursor.execute("SELECT pg_advisory_unlock(%s)", [AUDIT_SEGMENT_LOCK])


def segment_seal_due() -> Segment | None:
    """What the job runs after sealing: a segment when one is due."""
    return segment_seal()
