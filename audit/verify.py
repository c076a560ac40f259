"""Recompute the audit chain and name its first broken link (``manage.py verify_audit``, ``make bench`` P10).

Streams raw rows in ``seq`` order (a server-side cursor on PostgreSQL; a long chain in parallel ranges, one
process per CPU) and hashes them with ``audit.chain``: no ORM objects, so each process verifies over a hundred
thousand entries a second.
"""

from __future__ import annotations

import hashlib
import multiprocessing
import os
import queue
import signal
import threading
import time
from dataclasses import dataclass

from django.db import connection

from audit import chain

# PostgreSQL renders the time and the address as the canonical text itself (on another core, and psycopg then
# parses no timestamps); SQLite hands back Django's stored text, which chain.utc_iso rewrites cheaply.
_PG_COLUMNS = {
    "created_at": """to_char(created_at AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS.US"Z"')""",
    "ip": "host(ip)",
    "tenant_id": "tenant_id::text",
}


def _select(vendor: str) -> str:
    columns = ", ".join(_PG_COLUMNS.get(name, name) if vendor == "postgresql" else name for name in chain.FIELDS)
    return (f"SELECT {columns}, prev_hash, hash FROM audit_auditentry "  # noqa: S608 (constant columns)
            "WHERE seq >= %s AND seq <= %s ORDER BY seq")


_FETCH = 10_000
# Above this many entries on PostgreSQL the chain is cut into ranges verified by one process each (each range
# starts from the stored hash of the entry before it, which the previous range verifies).
PARALLEL_MIN = 200_000


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


def _prefetched(cursor):
    """The cursor's rows in batches, the next batch fetched by a thread while this one is hashed: the database
    renders rows while Python hashes (about half the time each)."""
    ready: queue.Queue = queue.Queue(maxsize=2)
    stop = threading.Event()

    def fetch() -> None:
        try:
            while not stop.is_set():
                rows = cursor.fetchmany(_FETCH)
                ready.put(rows)
                if not rows:
                    return
        except BaseException as exc:  # handed to the reader, raised there
            ready.put(exc)

    thread = threading.Thread(target=fetch, name="verify-audit-fetch", daemon=True)
    thread.start()
    try:
        while True:
            rows = ready.get()
            if isinstance(rows, BaseException):
                raise rows
            if not rows:
                return
            yield rows
    finally:
        stop.set()
        while thread.is_alive():  # let a blocked put() finish so the thread ends before the cursor closes
            try:
                ready.get_nowait()
            except queue.Empty:
                thread.join(0.01)


@dataclass(frozen=True)
class _Range:
    entries: int
    broken: str | None


def _hash_before(seq: int) -> str | None:
    if seq == 1:
        return chain.GENESIS
    with connection.cursor() as cursor:
        cursor.execute("SELECT hash FROM audit_auditentry WHERE seq = %s", [seq - 1])
        row = cursor.fetchone()
    return row[0] if row else None


def _verify_range(lo: int, hi: int) -> _Range:
    """Verify the entries with ``lo <= seq <= hi``: all present, each linked to the one before, each hash its
    content's."""
    prev = _hash_before(lo)
    if prev is None:  # the range before reports the gap; here the chain just cannot start
        return _Range(0, None)
    expected = lo
    count = 0
    sha256 = hashlib.sha256
    canonical_values = chain.canonical_values
    broken = None
    diagnose = None
    with connection.chunked_cursor() as cursor:
        cursor.execute(_select(connection.vendor), [lo, hi])
        batches = _prefetched(cursor)
        try:
            for rows in batches:
                if broken is not None:
                    break
                for row in rows:
                    seq = row[0]
                    if seq != expected:
                        missing = f"seq {expected}" if seq == expected + 1 else f"seq {expected}..{seq - 1}"
                        broken = f"{missing} missing before seq {seq} (id {row[1]}): deleted"
                        break
                    row_prev, row_hash = row[15], row[16]
                    if row_prev != prev:
                        broken, diagnose = "", (seq, row[1], row_prev)  # asked once the fetching has stopped
                        break
                    digest = sha256(prev.encode("ascii") + canonical_values(row[:15])).hexdigest()
                    if digest != row_hash:
                        broken = f"seq {seq} (id {row[1]}): edited: its content no longer matches its hash"
                        break
                    prev = digest
                    expected += 1
                    count += 1
        finally:
            batches.close()  # the fetching thread ends before the cursor closes
    if diagnose is not None:
        broken = _diagnose(*diagnose)
    elif broken is None and expected <= hi:
        missing = f"seq {expected}" if expected == hi else f"seq {expected}..{hi}"
        broken = f"{missing} missing before seq {hi + 1}: deleted"
    return _Range(count, broken)


def _verify_range_in_child(bounds: tuple[int, int]) -> _Range:
    from django.db import connections

    try:
        return _verify_range(*bounds)
    finally:
        connections.close_all()


def _child_signals() -> None:
    # A forked child inherits the caller's handlers (the bench turns SIGTERM into KeyboardInterrupt): the pool
    # stops its children with SIGTERM, which should just end them.
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    signal.signal(signal.SIGINT, signal.SIG_IGN)


def _bounds(head: int, parts: int) -> list[tuple[int, int]]:
    step = -(-head // parts)
    return [(lo, min(head, lo + step - 1)) for lo in range(1, head + 1, step)]


def verify(*, processes: int | None = None) -> Result:
    """Verify the whole sealed chain. On PostgreSQL a long chain is verified by ``processes`` (default: one per
    CPU, at most 4) in parallel ranges; the first broken link is the one in the lowest range."""
    from django.db import connections

    started = time.perf_counter()
    with connection.cursor() as cursor:
        cursor.execute("SELECT COALESCE(MAX(seq), 0) FROM audit_auditentry")
        head = int(cursor.fetchone()[0])
        cursor.execute("SELECT COUNT(*) FROM audit_auditentry WHERE hash = ''")
        unsealed = int(cursor.fetchone()[0])
    processes = processes or min(4, os.cpu_count() or 1)
    ranges = None
    if head == 0:
        ranges = []
    elif (processes > 1 and head >= PARALLEL_MIN and connection.vendor == "postgresql"
          and not connection.in_atomic_block):  # a test's transaction: children could not see its rows
        connections.close_all()  # children open their own; a forked socket must not be shared
        pool = multiprocessing.get_context("fork").Pool(processes, initializer=_child_signals)
        try:
            ranges = pool.map(_verify_range_in_child, _bounds(head, processes * 4))
            pool.close()  # let the children exit on their own
        finally:
            if ranges is None:
                pool.terminate()
            else:
                pool.join()
    else:
        ranges = [_verify_range(1, head)]
    entries, broken = 0, None
    for part in ranges:
        entries += part.entries
        if part.broken is not None:
            broken = part.broken
            break
    return Result(entries=entries, seconds=time.perf_counter() - started, unsealed=unsealed, broken=broken)
