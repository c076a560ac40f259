"""A failed sign-in records the address tried only when it is one: whatever else was typed into the email box
(a password, most likely) never reaches the audit trail."""

from __future__ import annotations

import json

import pytest
from django.contrib.auth import authenticate

from audit.models import AuditEntry
from tenants.models import Role

pytestmark = pytest.mark.django_db

PASSWORD_LIKE = "Tr0ub4dor&3-horse-staple"


def _failures() -> list[AuditEntry]:
    return list(AuditEntry.objects.filter(action="auth.login_failed").order_by("id"))


def _stored(entry: AuditEntry) -> str:
    """Everything of the row that could hold what was typed."""
    return json.dumps([entry.data, entry.actor_label, entry.target_type, entry.target_id, entry.action])


def test_a_password_typed_as_the_email_is_not_stored(client, acme, member_of):
    dev = member_of(acme, Role.DEVELOPER)
    client.post("/accounts/login/", {"login": PASSWORD_LIKE, "password": "whatever-was-typed-next"})
    authenticate(email=PASSWORD_LIKE, password="x")  # whichever door the attempt comes through
    authenticate(username=f"{PASSWORD_LIKE}@", password="x")
    failures = _failures()
    assert failures, "a failed sign-in is still recorded"
    for entry in failures:
        assert PASSWORD_LIKE not in _stored(entry) and "whatever-was-typed-next" not in _stored(entry)
        assert entry.data == {"identifier": "invalid"}
    assert dev.email not in json.dumps([e.data for e in failures])


@pytest.mark.parametrize("typed", [
    "not an email", "a" * 250 + "@b.example", "alice@", "@acme.example", "alice@acme.example\nX-Injected: 1",
    "x" * 10_000,
])
def test_only_a_valid_email_of_sane_length_is_recorded(typed):
    authenticate(email=typed, password="x")
    [entry] = _failures()
    assert entry.data == {"identifier": "invalid"} and typed not in _stored(entry)


def test_a_valid_email_is_recorded_for_investigations(client, acme, member_of):
    dev = member_of(acme, Role.DEVELOPER)
    client.post("/accounts/login/", {"login": dev.email, "password": "wrong"})
    [entry] = _failures()
    assert entry.data == {"email": dev.email} and "wrong" not in _stored(entry)
    authenticate(email="Nobody@Example.COM", password="x")
    assert _failures()[-1].data == {"email": "Nobody@Example.COM"}
