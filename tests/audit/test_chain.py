"""R-AUD-2: every entry is hash-chained; verify_audit recomputes the chain and names the first broken link after
an edit, a deletion or a reordering (forced with the append-only trigger lifted, as an attacker with the
database owner's rights could)."""

from __future__ import annotations

import pytest
from django.core.management import CommandError, call_command
from django.db import connection

from audit import chain, guard
from audit.models import AuditEntry
from audit.services import audit_seal, record


def _entries(n: int, tenant=None) -> list[AuditEntry]:
    made = [record(action=f"test.event.{i}", tenant=tenant, data={"i": i, "note": "é"}) for i in range(n)]
    audit_seal()
    return made


@pytest.fixture
def unguarded(db):
    """The trigger off for one test (as a DBA could), back on after."""
    guard.uninstall(connection)
    yield connection
    guard.install(connection)


def _raw(sql: str, params=()) -> None:
    with connection.cursor() as cursor:
        cursor.execute(sql, params)


def _verify_fails() -> str:
    with pytest.raises(CommandError) as caught:
        call_command("verify_audit")
    return str(caught.value)


def test_record_is_chained_by_the_sealer_in_order(db):
    entries = _entries(3)
    rows = list(AuditEntry.objects.order_by("seq"))
    assert [r.id for r in rows] == [e.id for e in entries]
    assert [r.seq for r in rows] == [1, 2, 3]
    assert rows[0].prev_hash == chain.GENESIS
    assert rows[1].prev_hash == rows[0].hash and rows[2].prev_hash == rows[1].hash
    assert all(len(r.hash) == 64 for r in rows)


def test_hash_is_sha256_of_prev_hash_and_the_canonical_entry(db):
    (entry,) = _entries(1)
    row = AuditEntry.objects.values(*chain.FIELDS, "hash").get(pk=entry.pk)
    import hashlib

    body = chain.canonical(row)
    assert body.startswith(b'{"action":"test.event.0","actor_id":null,"actor_kind":"system"')
    assert b"\\u00e9" in body and b" " not in body.replace(b"test.event", b"")
    assert hashlib.sha256(chain.GENESIS.encode() + body).hexdigest() == row["hash"]


def test_entries_recorded_before_a_seal_are_unsealed_until_then(db):
    record(action="test.pending")
    assert AuditEntry.objects.get().hash == ""
    assert audit_seal() == 1
    assert audit_seal() == 0


def test_verify_audit_passes_a_clean_chain(db, acme, alice, capsys):
    from django.test import RequestFactory

    request = RequestFactory().get("/", HTTP_USER_AGENT="Mozilla/5.0 ✓ " + "x" * 400, REMOTE_ADDR="203.0.113.9")
    request.user, request.request_id = alice, "req-123"
    record(action="test.with_context", actor=alice, tenant=acme, request=request, data={"nested": {"b": 1, "a": [2]}})
    _entries(4, tenant=acme)
    call_command("verify_audit")
    total = AuditEntry.objects.count()  # acme's creation is audited too
    assert f"{total} entries verified" in capsys.readouterr().out
    entry = AuditEntry.objects.get(action="test.with_context")
    assert (entry.actor_kind, entry.request_id, entry.ip) == ("user", "req-123", "203.0.113.9")
    assert len(entry.user_agent) == 256


def test_verify_audit_names_an_edited_entry(unguarded):
    entries = _entries(5)
    _raw("UPDATE audit_auditentry SET action = 'test.innocent' WHERE id = %s", [entries[2].id])
    assert f"seq 3 (id {entries[2].id}): edited" in _verify_fails()


def test_verify_audit_names_an_edited_and_rehashed_entry_by_the_next_link(unguarded):
    entries = _entries(5)
    _raw("UPDATE audit_auditentry SET hash = %s WHERE id = %s", ["f" * 64, entries[2].id])
    message = _verify_fails()
    # Its own hash no longer matches its content; had the forger rehashed it, the next link would break.
    assert f"seq 3 (id {entries[2].id})" in message


def test_verify_audit_names_a_deleted_entry(unguarded):
    entries = _entries(5)
    _raw("DELETE FROM audit_auditentry WHERE id = %s", [entries[1].id])
    assert f"seq 2 missing before seq 3 (id {entries[2].id}): deleted" in _verify_fails()


def test_verify_audit_names_a_reordering(unguarded):
    entries = _entries(5)
    third, fourth = entries[2].id, entries[3].id
    _raw("UPDATE audit_auditentry SET seq = NULL WHERE id = %s", [third])
    _raw("UPDATE audit_auditentry SET seq = 3 WHERE id = %s", [fourth])
    _raw("UPDATE audit_auditentry SET seq = 4 WHERE id = %s", [third])
    assert f"seq 3 (id {fourth}): reordered: it was chained after id {third}" in _verify_fails()


def test_fast_canonical_encoding_matches_its_definition():
    import uuid
    from datetime import UTC, datetime
    from ipaddress import ip_address

    row = {"seq": 7, "id": 9, "created_at": datetime(2026, 12, 4, 3, 55, 2, 0, tzinfo=UTC), "action": "key.created",
           "actor_kind": "user", "actor_id": None, "actor_label": 'Zoë "quoted" \\ <x>\n', "api_key_id": "",
           "tenant_id": uuid.UUID("0b8f6a52-3c1e-4f7e-9a51-2f7d7a0c1e11"), "target_type": "tenants.apikey",
           "target_id": "12", "ip": ip_address("2001:db8::1"),
           "user_agent": "Mozilla/5.0 ✓", "request_id": "", "data": {"b": [1, 2.5, None], "a": {"z": "ü", "y": True}}}
    assert chain.canonical(row) == chain.canonical_reference(row)
    assert b'"created_at":"2026-12-04T03:55:02.000000Z"' in chain.canonical(row)
    assert b'"tenant_id":"0b8f6a52-3c1e-4f7e-9a51-2f7d7a0c1e11"' in chain.canonical(row)
    as_text = {**row, "created_at": "2026-12-04 03:55:02", "tenant_id": "0b8f6a523c1e4f7e9a512f7d7a0c1e11",
               "data": '{"a": {"y": true, "z": "\\u00fc"}, "b": [1, 2.5, null]}'}
    assert chain.canonical(as_text) == chain.canonical(row)


@pytest.mark.services
@pytest.mark.django_db(transaction=True)
def test_parallel_verification_checks_every_range_and_its_seams(monkeypatch):
    """Ranges verified by separate processes (on PostgreSQL; other databases verify in one pass, asked for the
    same): a link broken at a seam between ranges, or a deletion at the end of one, is still found, and named as
    the first broken link."""
    import audit.verify

    monkeypatch.setattr(audit.verify, "PARALLEL_MIN", 0)
    entries = _entries(40)
    result = audit.verify.verify(processes=2)  # 8 ranges of 5
    assert result.broken is None and result.entries == 40
    guard.uninstall(connection)
    try:
        _raw("DELETE FROM audit_auditentry WHERE id = %s", [entries[9].id])  # the last of the second range
        _raw("UPDATE audit_auditentry SET action = 'x' WHERE id = %s", [entries[30].id])
    finally:
        guard.install(connection)
    result = audit.verify.verify(processes=2)
    assert result.broken.startswith("seq 10 missing before seq 11") and result.broken.endswith(": deleted")
    assert result.entries == 9


def test_an_entry_made_with_an_api_key_names_the_key_as_actor(api_client, acme, management_key, unthrottled,
                                                              django_capture_on_commit_callbacks):
    unthrottled(acme)
    key = management_key(acme)
    with django_capture_on_commit_callbacks(execute=True):
        response = api_client.post("/api/v1/keys", {"name": "ivr", "scopes": ["inference"]}, format="json",
                                   HTTP_AUTHORIZATION=f"Bearer {key}", HTTP_USER_AGENT="wattle-cli/1.0")
    assert response.status_code == 201
    entry = AuditEntry.objects.get(action="api_key.create", data__key_id=response.json()["key_id"])
    assert (entry.actor_kind, entry.api_key_id, entry.actor_id) == ("api_key", key.split("_")[1], None)
    assert entry.actor_label == f"key {key.split('_')[1]}" and entry.user_agent == "wattle-cli/1.0"
    assert entry.request_id  # the request id the logs carry
