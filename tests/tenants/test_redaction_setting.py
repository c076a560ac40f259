"""The tenant's redaction mode: set by owners and admins on the settings page, audited, and published in the
tenant's record for the data plane (R-RED-1, R-AUD-4)."""

from __future__ import annotations

import pytest
from django.test import Client

from audit.models import AuditEntry
from core import contract
from core.redis import get_redis
from tenants.models import Role, Tenant
from tests.conftest import sign_in

pytestmark = pytest.mark.django_db


def _published(tenant) -> contract.TenantRecord:
    return contract.TenantRecord.decode(get_redis().get(contract.tenant_record_key(str(tenant.pk))))


def test_owner_sets_restore_mode_it_is_audited_and_published(owner_client, acme, django_capture_on_commit_callbacks):
    with django_capture_on_commit_callbacks(execute=True):
        response = owner_client.post(f"/t/{acme.slug}/settings/", {"section": "redaction", "redaction": "restore"})
    assert response.status_code == 302
    acme.refresh_from_db()
    assert acme.redaction == Tenant.Redaction.RESTORE
    entry = AuditEntry.objects.get(action="tenant.redaction.update", tenant_id=acme.pk)
    assert entry.data["from"] == "off" and entry.data["to"] == "restore"
    assert _published(acme).redaction == "restore"


def test_the_settings_page_shows_the_redaction_choice(owner_client, acme):
    page = owner_client.get(f"/t/{acme.slug}/settings/")
    assert page.status_code == 200
    assert b'name="redaction"' in page.content and b"x-wattle-redact" in page.content


def test_saving_the_same_mode_writes_no_audit_entry(owner_client, acme):
    owner_client.post(f"/t/{acme.slug}/settings/", {"section": "redaction", "redaction": "off"})
    assert not AuditEntry.objects.filter(action="tenant.redaction.update").exists()


def test_an_unknown_mode_is_a_400_and_changes_nothing(owner_client, acme):
    response = owner_client.post(f"/t/{acme.slug}/settings/", {"section": "redaction", "redaction": "everything"})
    assert response.status_code == 400
    acme.refresh_from_db()
    assert acme.redaction == "off"


def test_a_developer_cannot_change_it(acme, member_of):
    developer = sign_in(Client(), member_of(acme, Role.DEVELOPER))
    response = developer.post(f"/t/{acme.slug}/settings/", {"section": "redaction", "redaction": "redact"})
    assert response.status_code == 403
    acme.refresh_from_db()
    assert acme.redaction == "off"


def test_another_tenants_member_gets_a_404(owner_client, bluegum):
    response = owner_client.post(f"/t/{bluegum.slug}/settings/", {"section": "redaction", "redaction": "redact"})
    assert response.status_code == 404
    bluegum.refresh_from_db()
    assert bluegum.redaction == "off"


def test_signed_out_is_sent_to_sign_in(acme):
    response = Client().post(f"/t/{acme.slug}/settings/", {"section": "redaction", "redaction": "redact"})
    assert response.status_code == 302 and "login" in response["Location"]
    acme.refresh_from_db()
    assert acme.redaction == "off"
