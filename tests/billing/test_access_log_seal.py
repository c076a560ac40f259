"""R-AUD-1: the access records are sealed into the audit chain in batches by digest (one ``access.batch`` entry per
batch), ``verify_access_log`` recomputes every batch, and an edit, deletion or addition of a sealed record (a forced
UPDATE in the database, on SQLite and PostgreSQL alike) makes it fail naming the batch."""

from __future__ import annotations

import hashlib
import json
import uuid
from datetime import UTC, datetime, timedelta

import pytest
from django.core.management import CommandError, call_command
from django.db import connection
from django.utils import timezone

from audit.models import AuditEntry
from audit.services import audit_seal
from audit.verify import verify
from billing import access_log
from billing.models import UsageEvent
from billing.services import _store, _to_values
from core import contract

pytestmark = pytest.mark.django_db


def _records(tenant, count: int, *, customer: str = "cust-1") -> list[UsageEvent]:
    start = timezone.now() - timedelta(minutes=10)
    return [
        UsageEvent.objects.create(
            request_id=uuid.uuid4().hex, tenant=tenant, key_id="k3y", endpoint="chat.completions", model="m",
            backend="sim-a", status=200, prompt_tokens=10 + i, completion_tokens=5, ttft_ms=12.5, duration_ms=40.25,
            created_at=start + timedelta(seconds=i), customer_id=customer, redactions={"AU_TFN": 1} if i % 2 else None,
            prompt_sha256=hashlib.sha256(f"p{i}".encode()).hexdigest(),
            reply_sha256=hashlib.sha256(f"r{i}".encode()).hexdigest(),
        )
        for i in range(count)
    ]


def _expected_digest(rows: list[UsageEvent]) -> str:
    """The documented encoding (docs/audit.md), computed here independently of billing.access_log."""
    digest = hashlib.sha256()
    for row in sorted(rows, key=lambda r: r.pk):
        row.refresh_from_db()
        obj = {
            "id": row.pk, "request_id": row.request_id, "tenant_id": str(row.tenant_id), "key_id": row.key_id,
            "customer_id": row.customer_id, "endpoint": row.endpoint, "model": row.model, "backend": row.backend,
            "status": row.status, "error_code": row.error_code, "stream": row.stream,
            "client_disconnected": row.client_disconnected, "prompt_tokens": row.prompt_tokens,
            "completion_tokens": row.completion_tokens, "ttft_ms": row.ttft_ms, "duration_ms": row.duration_ms,
            "created_at": row.created_at.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ"),
            "redactions": row.redactions, "prompt_sha256": row.prompt_sha256, "reply_sha256": row.reply_sha256,
        }
        digest.update(json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=True).encode() + b"\n")
    return digest.hexdigest()


def _verify_fails(match: str) -> str:
    result = access_log.access_verify()
    assert result.broken is not None and match in result.broken, result.broken
    with pytest.raises(CommandError, match="access log broken at"):
        call_command("verify_access_log")
    return result.broken


def test_sealing_writes_one_chain_entry_per_batch_and_verifies(acme, capsys):
    rows = _records(acme, 5)
    assert access_log.access_seal(batch=2) == 5
    entries = list(AuditEntry.objects.filter(action="access.batch").order_by("id"))
    assert [e.data["count"] for e in entries] == [2, 2, 1]  # one entry per batch, never per record
    first = entries[0]
    assert (first.data["first_id"], first.data["last_id"]) == (rows[0].pk, rows[1].pk)
    assert first.data["digest"] == _expected_digest(rows[:2])
    assert first.actor_kind == AuditEntry.ActorKind.SYSTEM and first.tenant_id is None
    for row, entry in zip(rows, [entries[0]] * 2 + [entries[1]] * 2 + [entries[2]], strict=True):
        row.refresh_from_db()
        assert row.access_batch == entry.pk
    assert access_log.access_seal(batch=2) == 0  # nothing left: no empty batch entry
    assert AuditEntry.objects.filter(action="access.batch").count() == 3

    audit_seal()  # the batch entries join the hash chain like any other entry
    assert verify().broken is None
    result = access_log.access_verify()
    assert (result.broken, result.batches, result.records, result.unsealed) == (None, 3, 5, 0)
    call_command("verify_access_log")
    assert "3 access batches (5 records) verified" in capsys.readouterr().out


def test_records_not_yet_sealed_are_counted_not_failed(acme):
    _records(acme, 2)
    access_log.access_seal()
    _records(acme, 3)
    result = access_log.access_verify()
    assert result.broken is None and result.unsealed == 3


def _forced_update(sql: str, params: list) -> None:
    """Edit the table behind the application's back, as someone with database access would."""
    with connection.cursor() as cursor:
        cursor.execute(sql, params)


def test_a_forced_edit_of_a_sealed_record_is_named(acme):
    rows = _records(acme, 4)
    access_log.access_seal(batch=2)
    table = UsageEvent._meta.db_table
    _forced_update(f"UPDATE {table} SET completion_tokens = 1 WHERE id = %s", [rows[3].pk])  # noqa: S608
    second = AuditEntry.objects.filter(action="access.batch").order_by("id")[1]
    broken = _verify_fails("a record was edited")
    assert broken.startswith(f"access batch {second.pk} ") and f"records {rows[2].pk}-{rows[3].pk}" in broken


def test_a_forced_edit_of_the_customer_or_a_digest_is_named(acme):
    rows = _records(acme, 2)
    access_log.access_seal()
    table = UsageEvent._meta.db_table
    _forced_update(f"UPDATE {table} SET customer_id = %s WHERE id = %s", ["someone-else", rows[0].pk])  # noqa: S608
    _verify_fails("a record was edited")
    _forced_update(f"UPDATE {table} SET customer_id = %s, reply_sha256 = %s WHERE id = %s",  # noqa: S608
                   ["cust-1", "0" * 64, rows[0].pk])
    _verify_fails("a record was edited")


def test_a_deleted_added_or_unsealed_record_is_named(acme):
    rows = _records(acme, 3)
    access_log.access_seal()
    [entry] = AuditEntry.objects.filter(action="access.batch")
    table = UsageEvent._meta.db_table
    # Taken out of its batch (to be edited and sealed again elsewhere): the batch comes up short.
    _forced_update(f"UPDATE {table} SET access_batch = NULL WHERE id = %s", [rows[1].pk])  # noqa: S608
    assert "1 of its 3 records deleted or moved out" in _verify_fails(f"access batch {entry.pk}")
    _forced_update(f"UPDATE {table} SET access_batch = %s WHERE id = %s", [entry.pk, rows[1].pk])  # noqa: S608
    assert access_log.access_verify().broken is None
    # A record slipped into a sealed batch.
    [extra] = _records(acme, 1)
    _forced_update(f"UPDATE {table} SET access_batch = %s WHERE id = %s", [entry.pk, extra.pk])  # noqa: S608
    _verify_fails("1 records added or moved in")
    _forced_update(f"DELETE FROM {table} WHERE id = %s", [extra.pk])  # noqa: S608
    # Deleted outright.
    _forced_update(f"DELETE FROM {table} WHERE id = %s", [rows[0].pk])  # noqa: S608
    _verify_fails("1 of its 3 records deleted")


def test_records_claiming_a_batch_the_trail_lacks_are_named(acme):
    rows = _records(acme, 1)
    _forced_update(f"UPDATE {UsageEvent._meta.db_table} SET access_batch = 999999 WHERE id = %s",  # noqa: S608
                   [rows[0].pk])
    _verify_fails("claim a batch the audit trail has no entry for")


def test_ingest_stores_the_access_fields_and_no_text(acme):
    line = contract.encode_usage_event(
        "req-access-1", str(acme.pk), 200, 1_700_000_000.25, "k3y", "chat.completions", "m", "sim-a", "", False, False,
        7, 3, 11.0, 20.0, 1_700_000_000.25, 0.4, "00-x", {"AU_TFN": 2, "AU_EMAIL": 1},
        customer_id="acct.42@crm+x", prompt_sha256="a" * 64, reply_sha256="b" * 64,
    )
    _store([_to_values(contract.UsageEvent.decode(line))])
    row = UsageEvent.objects.get(request_id="req-access-1")
    assert (row.customer_id, row.prompt_sha256, row.reply_sha256) == ("acct.42@crm+x", "a" * 64, "b" * 64)
    assert row.redactions == {"AU_TFN": 2, "AU_EMAIL": 1} and row.access_batch is None
    assert row.created_at == datetime.fromtimestamp(1_700_000_000.25, tz=UTC)


def test_an_event_from_before_the_access_fields_reads_them_as_empty():
    old = b'{"request_id": "r", "tenant": "t", "status": 200, "created": 1.0, "redactions": null, "v": 1}'
    event = contract.UsageEvent.decode(old)
    assert (event.customer_id, event.prompt_sha256, event.reply_sha256) == ("", "", "")


@pytest.mark.parametrize(("field", "value"), [
    ("customer_id", "x" * 65), ("customer_id", "bad\nid"), ("customer_id", "two words"), ("customer_id", 42),
    ("customer_id", "~erased"),  # the marker an erasure leaves (billing.personal_data): no caller can send it
    ("prompt_sha256", "A" * 64), ("reply_sha256", "ab"),
])
def test_a_malformed_access_field_is_refused_by_the_contract(field, value):
    line = json.dumps({"request_id": "r", "tenant": "t", "status": 200, "created": 1.0, "v": 1, field: value})
    with pytest.raises(contract.RecordError):
        contract.UsageEvent.decode(line)


def test_a_run_of_the_job_seals_a_bounded_slice_of_a_backlog(acme, settings, monkeypatch):
    settings.ACCESS_SEAL_BATCH = 2
    monkeypatch.setattr(access_log, "RUN_BATCHES", 2)
    _records(acme, 5)
    access_log.access_jobs()
    assert UsageEvent.objects.filter(access_batch__isnull=True).count() == 1  # two batches of two this run
    access_log.access_jobs()
    assert not UsageEvent.objects.filter(access_batch__isnull=True).exists()
    assert access_log.access_verify().broken is None
