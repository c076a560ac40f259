"""Recompute the audit chain and name its first broken link (``manage.py verify_audit``, ``make bench`` P10).

Streams raw rows in ``seq`` order (a server-side cursor on PostgreSQL) and hashes them with ``audit.chain``: no
ORM objects, so it runs at hundreds of thousands of entries a second.
"""

from __future__ import annotations

import hashlib
import json
import time
from dataclasses import dataclass

from django.db import connection

from audit import chain

_COLUMNS = ", ".join(chain.FIELDS)
_SELECT = f"SELECT {_COLUMNS}, prev_hash, hash FROM audit_auditentry WHERE seq IS NOT NULL ORDER BY seq"  # noqa: S608
_FETCH = 10_000


@dataclass(frozen=True)
class Result:
    entries: int
    seconds: float
    unsealed: int
    broken: str | None = None  # the first broken link, in words

    @property
    def rate(self) -> float:
        return self.entries / self.seconds if self.seconds > 0 else float("inf")


def _diagnose(seq: int, row_id: int, row_prev: str) -> str:
    """Why the row at ``seq`` does not follow the one before it: the entry its prev_hash names sits later in the
    chain (reordered), or no longer exists as it was hashed (deleted, or edited and rehashed)."""
    with connection.cursor() as cursor:
        cursor.execute("SELECT seq, id FROM audit_auditentry WHERE hash = %s", [row_prev])
        found = cursor.fetchone()
    if found is not None and found[0] is not None and found[0] > seq:
        return (f"seq {seq} (id {row_id}): reordered: it was chained after id {found[1]}, "
                f"which now sits later at seq {found[0]}")
    return (f"seq {seq} (id {row_id}): its prev_hash names no entry before it: the entry it followed "
            f"was deleted, or edited and rehashed")


def verify() -> Result:
    started = time.perf_counter()
    prev = chain.GENESIS
    expected = 1
    count = 0
    sha256 = hashlib.sha256
    loads = json.loads
    encode = json.JSONEncoder(sort_keys=True, separators=(",", ":"), ensure_ascii=True, allow_nan=False).encode
    utc_iso = chain.utc_iso
    names = chain.FIELDS
    broken = None
    with connection.chunked_cursor() as cursor:
        cursor.execute(_SELECT)
        while broken is None:
            rows = cursor.fetchmany(_FETCH)
            if not rows:
                break
            for row in rows:
                seq = row[0]
                if seq != expected:
                    if seq > expected:
                        missing = f"seq {expected}" if seq == expected + 1 else f"seq {expected}..{seq - 1}"
                        broken = f"{missing} missing before seq {seq} (id {row[1]}): deleted"
                    else:
                        broken = f"seq {seq} (id {row[1]}) appears twice"
                    break
                row_prev, row_hash = row[15], row[16]
                if row_prev != prev:
                    broken = _diagnose(seq, row[1], row_prev)
                    break
                doc = dict(zip(names, row[:15], strict=True))
                doc["created_at"] = utc_iso(doc["created_at"])
                data = doc["data"]
                if isinstance(data, str):
                    doc["data"] = loads(data)
                if doc["ip"] is not None:
                    doc["ip"] = str(doc["ip"])
                digest = sha256(prev.encode("ascii") + encode(doc).encode("ascii")).hexdigest()
                if digest != row_hash:
                    broken = f"seq {seq} (id {row[1]}): edited: its content no longer matches its hash"
                    break
                prev = digest
                expected += 1
                count += 1
    with connection.cursor() as cursor:
        cursor.execute("SELECT COUNT(*) FROM audit_auditentry WHERE hash = ''")
        unsealed = int(cursor.fetchone()[0])
    return Result(entries=count, seconds=time.perf_counter() - started, unsealed=unsealed, broken=broken)
