"""R-AUD-2/3 under attack: entries deleted from the end of the chain (the newest, sealing and archive records
included) leave a chain that is whole by itself; verify_audit holds it to the newest archived segment."""

from __future__ import annotations

import boto3
import pytest
from django.core.management import CommandError, call_command
from django.db import connection
from moto import mock_aws

from audit import guard
from audit.archive import REGION, segment_seal
from audit.models import AuditEntry
from audit.services import audit_seal, record


@pytest.fixture
def unguarded(db):
    """The trigger off for one test (as a DBA could), back on after."""
    guard.uninstall(connection)
    yield connection
    guard.install(connection)


def _sealed(n: int, start: int = 0) -> None:
    for i in range(start, start + n):
        record(action="test.tail", data={"i": i})
    audit_seal()


def _delete_from(seq: int) -> None:
    with connection.cursor() as cursor:
        cursor.execute("DELETE FROM audit_auditentry WHERE seq >= %s OR seq IS NULL", [seq])


def _verify_fails() -> str:
    with pytest.raises(CommandError) as caught:
        call_command("verify_audit")
    return str(caught.value)


def test_deleting_the_newest_archived_entries_is_found(unguarded):
    _sealed(5)
    segment = segment_seal(force=True)  # seq 1..5 archived; its record becomes seq 6
    audit_seal()
    call_command("verify_audit")
    _delete_from(4)
    assert AuditEntry.objects.count() == 3  # what is left chains cleanly from the start ...
    message = _verify_fails()  # ... but the archive knows seq 5
    assert f"seq {segment.last_seq}" in message and "deleted" in message


def test_a_rewritten_end_of_the_chain_is_found(unguarded):
    _sealed(5)
    segment_seal(force=True)
    audit_seal()
    _delete_from(4)
    _sealed(3, start=100)  # new entries chained in place of the deleted ones: seq 4, 5, 6
    assert AuditEntry.objects.filter(seq=5).exists()
    message = _verify_fails()
    assert "seq 5" in message and "archived" in message


def test_entries_after_the_newest_segment_do_not_break_verification(db):
    _sealed(3)
    segment_seal(force=True)
    _sealed(4, start=10)
    call_command("verify_audit")


def test_the_s3_archive_is_checked_too(unguarded, monkeypatch, settings):
    for name, value in {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing",
                        "AWS_SESSION_TOKEN": "testing", "AWS_DEFAULT_REGION": REGION}.items():
        monkeypatch.setenv(name, value)
    settings.AWS_ENDPOINT_URL = None
    with mock_aws():
        boto3.client("s3", region_name=REGION).create_bucket(
            Bucket="wattle-audit", ObjectLockEnabledForBucket=True,
            CreateBucketConfiguration={"LocationConstraint": REGION})
        settings.AUDIT_ARCHIVE_BUCKET = "wattle-audit"
        settings.AUDIT_ARCHIVE_KMS_KEY_ID = boto3.client("kms", region_name=REGION).create_key()["KeyMetadata"]["KeyId"]
        _sealed(4)
        segment_seal(force=True)
        audit_seal()
        _sealed(2, start=50)
        segment_seal(force=True)  # a second segment: the newest is the one checked
        audit_seal()
        call_command("verify_audit")
        _delete_from(6)
        assert "seq 7" in _verify_fails()


def test_an_export_records_only_the_filters_it_applied(owner_client, acme):
    from django.urls import reverse

    url = reverse("tenant_audit", kwargs={"slug": acme.slug})
    response = owner_client.get(url, {"action": "key.", "export": "csv", "note": "approved by the auditor",
                                      "x" * 40: "y" * 2000})
    assert response.status_code == 200
    exported = AuditEntry.objects.get(action="audit.exported")
    # A caller's own query parameters are not written into the trail as if they were filters.
    assert exported.data["filters"] == {"action": "key."}


# --- Overwriting by conflict: SQLite's REPLACE (its implicit delete fires no DELETE trigger) and PostgreSQL's
# nearest equivalent, INSERT ... ON CONFLICT DO UPDATE (an UPDATE, which its trigger sees) ----------------------
_COLUMNS = ("seq, id, created_at, action, actor_kind, actor_id, actor_label, api_key_id, tenant_id, target_type, "
            "target_id, ip, user_agent, request_id, data, prev_hash, hash")
_SQLITE = connection.vendor == "sqlite"


def _refused(sql: str, params=(), *, match: str | None = "append-only") -> None:
    from django.db import DatabaseError, transaction

    with pytest.raises(DatabaseError, match=match), transaction.atomic(), connection.cursor() as cursor:
        cursor.execute(sql, params)


def _overwrite(select: str, conflict: str) -> str:
    """Insert the rows of ``select`` over the entry they collide with on ``conflict``, as each database allows."""
    if _SQLITE:
        return f"INSERT OR REPLACE INTO audit_auditentry ({_COLUMNS}) {select}"
    return (f"INSERT INTO audit_auditentry ({_COLUMNS}) {select} "
            f"ON CONFLICT ({conflict}) DO UPDATE SET action = EXCLUDED.action")


def test_insert_or_replace_cannot_overwrite_a_sealed_entry_by_its_id(db):
    _sealed(2)
    first = AuditEntry.objects.get(seq=1)
    forged = _COLUMNS.replace("action", "'test.forged'")
    _refused(_overwrite(f"SELECT {forged} FROM audit_auditentry WHERE id = %s", "id"),  # noqa: S608
             [first.id])
    assert AuditEntry.objects.get(seq=1).action == "test.tail"


def test_insert_or_replace_cannot_take_a_sealed_entrys_place_in_the_chain(db):
    _sealed(2)
    _refused(_overwrite(
        "SELECT seq, id + 1000, created_at, 'test.forged', actor_kind, actor_id, actor_label, api_key_id, "
        "tenant_id, target_type, target_id, ip, user_agent, request_id, data, prev_hash, hash "
        "FROM audit_auditentry WHERE seq = 1", "seq"))
    assert AuditEntry.objects.filter(seq__isnull=False).count() == 2
    assert AuditEntry.objects.get(seq=1).action == "test.tail"


def test_the_sealing_update_cannot_replace_a_sealed_entry(db):
    _sealed(2)
    unsealed = record(action="test.unsealed")
    # SQLite: UPDATE OR REPLACE would delete the entry holding seq 1; the trigger refuses. PostgreSQL has no
    # REPLACE: the unique seq refuses it (an integrity error rather than the trigger's message).
    verb = "UPDATE OR REPLACE" if _SQLITE else "UPDATE"
    _refused(f"{verb} audit_auditentry SET seq = 1, prev_hash = %s, hash = %s WHERE id = %s",
             ["0" * 64, "f" * 64, unsealed.id], match="append-only" if _SQLITE else None)
    assert AuditEntry.objects.get(seq=1).action == "test.tail"
