"""R-SEC-2: destroying an organisation's kept transcripts is a deletion, so it asks for a recent
re-authentication first, and nothing is destroyed or audited until then."""

from __future__ import annotations

import pytest
from django.test import Client

from audit.models import AuditEntry
from tests.conftest import add_totp, sign_in

pytestmark = pytest.mark.django_db


def test_destroying_kept_transcripts_needs_a_recent_reauthentication(acme, alice):
    add_totp(alice)
    stale = sign_in(Client(), alice, reauthenticated=False)
    response = stale.post(f"/t/{acme.slug}/transcripts/destroy/", {"confirm": "destroy"})
    assert response.status_code == 302 and response["Location"].startswith("/accounts/reauthenticate/")
    assert not AuditEntry.objects.filter(action="retention.destroyed_now").exists()
    fresh = sign_in(Client(), alice)
    assert fresh.post(f"/t/{acme.slug}/transcripts/destroy/", {"confirm": "destroy"}).status_code == 302
    assert AuditEntry.objects.get(action="retention.destroyed_now").data["count"] == 0
