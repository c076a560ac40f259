"""R-AUD-2: audit entries are append-only: no update or delete path in code, and the database refuses UPDATE
and DELETE whatever sends them (the ORM, raw SQL). The sealer's one change (setting the chain fields on an
unsealed row, nothing else) is the only UPDATE allowed."""

from __future__ import annotations

import pytest
from django.db import DatabaseError, connection, transaction

from audit.models import AppendOnly, AuditEntry
from audit.services import audit_seal, record


@pytest.fixture
def sealed(db) -> AuditEntry:
    entry = record(action="test.sealed", data={"k": 1})
    audit_seal()
    return AuditEntry.objects.get(pk=entry.pk)


def _refused(sql: str, params=()) -> None:
    with pytest.raises(DatabaseError, match="append-only"), transaction.atomic(), connection.cursor() as cursor:
        cursor.execute(sql, params)


def test_queryset_update_and_delete_are_refused_in_code(sealed):
    with pytest.raises(AppendOnly):
        AuditEntry.objects.filter(pk=sealed.pk).update(action="x")
    with pytest.raises(AppendOnly):
        AuditEntry.objects.all().delete()
    with pytest.raises(AppendOnly):
        sealed.delete()


def test_saving_an_existing_entry_is_refused_in_code(sealed):
    sealed.action = "test.changed"
    with pytest.raises(AppendOnly):
        sealed.save()
    assert AuditEntry.objects.get(pk=sealed.pk).action == "test.sealed"


def test_database_refuses_raw_update_of_a_sealed_entry(sealed):
    _refused("UPDATE audit_auditentry SET action = 'x' WHERE id = %s", [sealed.pk])


def test_database_refuses_raw_delete(sealed):
    _refused("DELETE FROM audit_auditentry WHERE id = %s", [sealed.pk])
    assert AuditEntry.objects.filter(pk=sealed.pk).exists()


def test_database_refuses_rewriting_the_chain_fields_of_a_sealed_entry(sealed):
    _refused("UPDATE audit_auditentry SET hash = %s WHERE id = %s", ["0" * 64, sealed.pk])


def test_database_refuses_an_unsealed_update_that_changes_content(db):
    entry = record(action="test.pending")
    _refused("UPDATE audit_auditentry SET seq = 99, hash = %s, action = 'x' WHERE id = %s", ["a" * 64, entry.pk])
    _refused("UPDATE audit_auditentry SET data = '{}' WHERE id = %s", [entry.pk])


def test_database_refuses_a_delete_through_the_base_queryset(sealed):
    from django.db.models import QuerySet

    with pytest.raises(DatabaseError, match="append-only"), transaction.atomic():
        QuerySet(model=AuditEntry).filter(pk=sealed.pk).delete()


def test_deleting_the_actor_keeps_the_entry_as_recorded(db, django_user_model):
    user = django_user_model.objects.create_user(username="carol", email="carol@example.com", password="x")
    entry = record(action="test.by_user", actor=user)
    audit_seal()
    user_id = user.pk
    user.delete()
    row = AuditEntry.objects.values("actor_id", "actor_label", "actor_kind").get(pk=entry.pk)
    assert row == {"actor_id": user_id, "actor_label": "carol@example.com", "actor_kind": "user"}


@pytest.mark.parametrize("install", [True, False])
def test_a_database_without_an_append_only_trigger_is_refused(install):
    from django.core.exceptions import ImproperlyConfigured

    from audit import guard

    with pytest.raises(ImproperlyConfigured, match="append-only"):
        guard.statements("mysql", install=install)
