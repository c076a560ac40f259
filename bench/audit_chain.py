"""P10: ``manage.py verify_audit`` over a million chained audit entries.

The entries are inserted unsealed by SQL (``generate_series`` on PostgreSQL) and chained by the real sealer
(``audit.services.audit_seal``, whose rate is reported too), once: the trail is append-only, so they stay in the
bench database and a later run only adds what is missing. Then the verifier streams the whole chain and
recomputes every hash, as the command does.
"""

from __future__ import annotations

import time

from bench.scenarios import Verdict

P10_TARGET = ">= 100,000 entries/s verified"
P10_TITLE = "verify_audit over the chained audit trail"
TARGET_RATE = 100_000.0
_CHUNK = 200_000


def _sealed_count() -> int:
    from django.db import connection

    with connection.cursor() as cursor:
        cursor.execute("SELECT COUNT(*) FROM audit_auditentry WHERE seq IS NOT NULL")
        return int(cursor.fetchone()[0])


def load_entries(entries: int, log) -> float:
    """Make sure at least ``entries`` sealed entries exist; returns the sealer's rate (0 when none were added)."""
    from django.db import connection, transaction

    from audit.services import audit_seal

    missing = entries - _sealed_count()
    if missing <= 0:
        log(f"  {entries:,} chained entries already present")
        return 0.0
    started = time.perf_counter()
    added = 0
    while added < missing:
        n = min(_CHUNK, missing - added)
        with transaction.atomic(), connection.cursor() as cursor:
            if connection.vendor == "postgresql":
                cursor.execute(
                    "INSERT INTO audit_auditentry (created_at, action, actor_kind, actor_label, api_key_id, "
                    "target_type, target_id, ip, user_agent, request_id, data, prev_hash, hash) "
                    "SELECT now() - make_interval(secs => g), 'bench.event', 'api_key', 'key bench', 'bench', "
                    "'tenants.apikey', g::text, '203.0.113.7', 'bench/1.0', md5(g::text), "
                    "jsonb_build_object('n', g, 'scope', 'inference'), '', '' FROM generate_series(1, %s) AS g",
                    [n],
                )
            else:
                cursor.executemany(
                    "INSERT INTO audit_auditentry (created_at, action, actor_kind, actor_label, api_key_id, "
                    "target_type, target_id, ip, user_agent, request_id, data, prev_hash, hash) "
                    "VALUES (datetime('now'), 'bench.event', 'api_key', 'key bench', 'bench', 'tenants.apikey', "
                    "%s, '203.0.113.7', 'bench/1.0', %s, %s, '', '')",
                    [(str(g), f"{g:032x}", f'{{"n": {g}, "scope": "inference"}}') for g in range(n)],
                )
        added += n
    load_s = time.perf_counter() - started
    log(f"  inserted {missing:,} entries in {load_s:.1f}s")
    started = time.perf_counter()
    sealed = audit_seal(batch=20_000)
    seal_s = time.perf_counter() - started
    rate = sealed / seal_s if seal_s else 0.0
    log(f"  sealed {sealed:,} entries in {seal_s:.1f}s ({rate:,.0f} entries/s)")
    return rate


def run(*, entries: int, log) -> Verdict:
    from audit.verify import verify

    seal_rate = load_entries(entries, log)
    result = verify()
    log(f"  verified {result.entries:,} entries in {result.seconds:.2f}s: {result.rate:,.0f} entries/s"
        f"{'; BROKEN at ' + result.broken if result.broken else ''}")
    return Verdict(
        scenario="P10", workers=0, target=P10_TARGET,
        direct=f"{result.entries:,} entries",
        gateway=f"{result.rate:,.0f} entries/s",
        comparison=f"x{result.rate / TARGET_RATE:.2f} of the target",
        passed=result.broken is None and result.rate >= TARGET_RATE,
        metrics={"entries": result.entries, "seconds": result.seconds, "entries_per_s": result.rate,
                 "seal_entries_per_s": seal_rate, "unsealed": result.unsealed, "broken": result.broken},
        notes=[f"verify_audit {result.rate:,.0f} entries/s over {result.entries:,} entries"],
    )
