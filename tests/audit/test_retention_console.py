"""Who reads kept transcripts (R-RET, R-SEC-3): the tenant's owners and admins, decrypted on view and each view
audited; other roles 403, other tenants 404, anonymous to sign-in; staff only under break-glass access (reason,
re-authentication, expiry), refused and audited without it, every read under it audited. The settings page's
retention section (re-authenticated, audited) and an owner's "destroy now"."""

from __future__ import annotations

import base64
import os
import time
from datetime import timedelta

import pytest
from django.test import Client
from django.utils import timezone

from audit import envelope
from audit.models import AuditEntry, BreakGlassGrant, Transcript
from audit.transcripts import transcripts_ingest
from core import contract
from core.redis import get_redis
from tenants.models import Role
from tenants.services import tenant_retention_set
from tests.conftest import add_totp, sign_in

SECRET = "caller said their TFN is 123 456 782"


@pytest.fixture(autouse=True)
def _local_kek(settings):
    settings.AUDIT_TRANSCRIPT_KMS_KEY_ID = ""
    settings.AUDIT_TRANSCRIPT_LOCAL_KEK = base64.b64encode(os.urandom(32)).decode()
    envelope.forget()
    yield
    envelope.forget()


@pytest.fixture
def kept(acme, django_capture_on_commit_callbacks) -> Transcript:
    """One kept transcript of Acme."""
    with django_capture_on_commit_callbacks(execute=True):
        tenant_retention_set(tenant=acme, days=30)
    item = contract.TranscriptRecord(tenant=str(acme.pk), request_id="req_abc", created=time.time(), retention_days=30,
                                     prompt=[{"role": "user", "content": SECRET}], reply="Thanks, noted.",
                                     model="m", endpoint="chat.completions", customer_id="cust-7")
    get_redis().xadd(contract.transcript_stream_key(), {"t": item.encode()})
    transcripts_ingest()
    return Transcript.objects.get()


def test_owner_lists_and_reads_a_transcript_and_each_view_is_audited(owner_client, acme, kept):
    listing = owner_client.get(f"/t/{acme.slug}/transcripts/")
    assert listing.status_code == 200 and "req_abc" in listing.content.decode()
    assert SECRET not in listing.content.decode()  # the list shows metadata only
    for _ in range(2):
        detail = owner_client.get(f"/t/{acme.slug}/transcripts/{kept.pk}/")
        assert detail.status_code == 200
        assert SECRET in detail.content.decode() and "Thanks, noted." in detail.content.decode()
        assert "no-store" in detail["Cache-Control"]  # decrypted content stays out of caches
    assert "no-store" in listing["Cache-Control"]
    reads = AuditEntry.objects.filter(action="transcript.read", tenant=acme)
    assert reads.count() == 2 and all(r.data["break_glass"] is None and r.target_id == str(kept.pk) for r in reads)


def test_admin_reads_other_roles_are_refused(acme, kept, member_of):
    admin = sign_in(Client(), member_of(acme, Role.ADMIN))
    assert admin.get(f"/t/{acme.slug}/transcripts/{kept.pk}/").status_code == 200
    for role in (Role.DEVELOPER, Role.BILLING, Role.AGENT):
        client = sign_in(Client(), member_of(acme, role))
        assert client.get(f"/t/{acme.slug}/transcripts/").status_code == 403
        assert client.get(f"/t/{acme.slug}/transcripts/{kept.pk}/").status_code == 403
    assert AuditEntry.objects.filter(action="transcript.read").count() == 1


def test_other_tenant_gets_404_and_anonymous_is_sent_to_sign_in(client, acme, bluegum, bob, kept):
    add_totp(bob)
    other = sign_in(Client(), bob)
    assert other.get(f"/t/{acme.slug}/transcripts/").status_code == 404
    assert other.get(f"/t/{acme.slug}/transcripts/{kept.pk}/").status_code == 404
    # Bluegum's own pages don't reach Acme's row either.
    assert other.get(f"/t/{bluegum.slug}/transcripts/{kept.pk}/").status_code == 404
    response = client.get(f"/t/{acme.slug}/transcripts/{kept.pk}/")
    assert response.status_code == 302 and response["Location"].startswith("/accounts/login/")
    assert not AuditEntry.objects.filter(action="transcript.read").exists()


def test_a_transcript_whose_key_is_gone_is_shown_unreadable_not_a_500(owner_client, acme, kept):
    Transcript.objects.filter(pk=kept.pk).update(sealed=b"\0" * 40)
    response = owner_client.get(f"/t/{acme.slug}/transcripts/{kept.pk}/")
    assert response.status_code == 200 and "be decrypted" in response.content.decode()


def test_staff_read_without_break_glass_is_refused_and_audited(staff_client, staff, acme, kept):
    response = staff_client.get(f"/staff/tenants/{acme.slug}/transcripts/{kept.pk}/")
    assert response.status_code == 403 and SECRET not in response.content.decode()
    refused = AuditEntry.objects.get(action="transcript.read.refused")
    assert refused.actor == staff and refused.tenant == acme
    assert not AuditEntry.objects.filter(action="transcript.read").exists()
    # The staff list shows no metadata either, only the break-glass form.
    listing = staff_client.get(f"/staff/tenants/{acme.slug}/transcripts/")
    assert listing.status_code == 200 and "req_abc" not in listing.content.decode()


def test_staff_acting_as_the_tenant_cannot_read_content(staff_client, staff, acme, kept):
    staff_client.post(f"/staff/tenants/{acme.slug}/act-as/", {"reason": "Ticket 12"})
    assert staff_client.get(f"/t/{acme.slug}/").status_code == 200  # acting as the tenant
    assert staff_client.get(f"/t/{acme.slug}/transcripts/{kept.pk}/").status_code == 403
    assert AuditEntry.objects.filter(action="transcript.read.refused", actor=staff).exists()


def test_break_glass_needs_a_reason_and_a_fresh_reauthentication(staff, acme, kept):
    client = sign_in(Client(), staff, passkey_used=True)
    response = client.post(f"/staff/tenants/{acme.slug}/transcripts/break-glass/", {"reason": "   "})
    assert response.status_code == 400
    response = client.post(f"/staff/tenants/{acme.slug}/transcripts/break-glass/", {"reason": "x" * 501})
    assert response.status_code == 400
    stale = sign_in(Client(), staff, reauthenticated=False, passkey_used=True)
    response = stale.post(f"/staff/tenants/{acme.slug}/transcripts/break-glass/", {"reason": "Incident 4"})
    assert response.status_code == 302 and response["Location"].startswith("/accounts/reauthenticate/")
    assert not BreakGlassGrant.objects.exists()


def test_staff_reads_with_a_grant_every_read_audited_until_it_expires(staff_client, staff, acme, kept):
    response = staff_client.post(f"/staff/tenants/{acme.slug}/transcripts/break-glass/",
                                 {"reason": "Incident 4: tenant asked us to check a reply"})
    assert response.status_code == 302
    grant = BreakGlassGrant.objects.get()
    assert grant.user == staff and grant.tenant == acme
    assert timedelta(minutes=59) < grant.expires_at - timezone.now() <= timedelta(minutes=60)
    granted = AuditEntry.objects.get(action="transcript.break_glass.grant")
    assert granted.data["reason"].startswith("Incident 4") and granted.tenant == acme
    assert "req_abc" in staff_client.get(f"/staff/tenants/{acme.slug}/transcripts/").content.decode()
    for _ in range(2):
        detail = staff_client.get(f"/staff/tenants/{acme.slug}/transcripts/{kept.pk}/")
        assert detail.status_code == 200 and SECRET in detail.content.decode()
    reads = AuditEntry.objects.filter(action="transcript.read", actor=staff)
    assert reads.count() == 2 and {r.data["break_glass"] for r in reads} == {str(grant.pk)}
    # Expired: refused again, and audited.
    BreakGlassGrant.objects.filter(pk=grant.pk).update(expires_at=timezone.now() - timedelta(seconds=1))
    assert staff_client.get(f"/staff/tenants/{acme.slug}/transcripts/{kept.pk}/").status_code == 403
    assert AuditEntry.objects.filter(action="transcript.read.refused", actor=staff).count() == 1


def test_a_grant_covers_only_its_tenant(staff_client, acme, bluegum, kept):
    staff_client.post(f"/staff/tenants/{bluegum.slug}/transcripts/break-glass/", {"reason": "Bluegum incident"})
    assert staff_client.get(f"/staff/tenants/{acme.slug}/transcripts/{kept.pk}/").status_code == 403
    assert staff_client.get(f"/staff/tenants/{bluegum.slug}/transcripts/{kept.pk}/").status_code == 404



def test_staff_pages_are_not_for_tenant_members(owner_client, acme, kept):
    assert owner_client.get(f"/staff/tenants/{acme.slug}/transcripts/").status_code == 404
    assert owner_client.get(f"/staff/tenants/{acme.slug}/transcripts/{kept.pk}/").status_code == 404


def test_settings_section_sets_retention_after_reauthentication(owner_client, alice, acme,
                                                                django_capture_on_commit_callbacks):
    page = owner_client.get(f"/t/{acme.slug}/settings/")
    assert page.status_code == 200 and 'id="retention"' in page.content.decode()
    with django_capture_on_commit_callbacks(execute=True):
        response = owner_client.post(f"/t/{acme.slug}/settings/retention/", {"retention_days": "90"})
    assert response.status_code == 302
    acme.refresh_from_db()
    assert acme.retention_days == 90
    assert AuditEntry.objects.get(action="tenant.retention.update").data["to"] == 90
    for bad in ("2558", "-1", "ten", ""):
        response = owner_client.post(f"/t/{acme.slug}/settings/retention/", {"retention_days": bad})
        assert response.status_code == 400
    stale = sign_in(Client(), alice, reauthenticated=False)
    response = stale.post(f"/t/{acme.slug}/settings/retention/", {"retention_days": "5"})
    assert response["Location"].startswith("/accounts/reauthenticate/")
    acme.refresh_from_db()
    assert acme.retention_days == 90


def test_only_owners_and_admins_change_retention(acme, member_of):
    developer = sign_in(Client(), member_of(acme, Role.DEVELOPER))
    assert developer.post(f"/t/{acme.slug}/settings/retention/", {"retention_days": "5"}).status_code == 403


def test_owner_destroys_every_kept_transcript_now(owner_client, acme, kept, member_of):
    admin = sign_in(Client(), member_of(acme, Role.ADMIN))
    assert admin.post(f"/t/{acme.slug}/transcripts/destroy/", {"confirm": "destroy"}).status_code == 403
    assert owner_client.post(f"/t/{acme.slug}/transcripts/destroy/", {"confirm": "nope"}).status_code == 400
    assert Transcript.objects.exists()
    response = owner_client.post(f"/t/{acme.slug}/transcripts/destroy/", {"confirm": "destroy"})
    assert response.status_code == 302 and not Transcript.objects.exists()
    assert AuditEntry.objects.get(action="retention.destroyed_now").data["count"] == 1


def test_a_completion_prompt_and_a_multipart_message_are_shown(owner_client, acme, kept):
    records = [
        contract.TranscriptRecord(tenant=str(acme.pk), request_id="req_text", created=time.time(), retention_days=30,
                                  prompt="Complete this: G'day", reply="mate", endpoint="completions"),
        contract.TranscriptRecord(tenant=str(acme.pk), request_id="req_parts", created=time.time(), retention_days=30,
                                  prompt=[{"role": "user", "content": [{"type": "text", "text": "part one"}]}],
                                  reply="ok"),
    ]
    for item in records:
        get_redis().xadd(contract.transcript_stream_key(), {"t": item.encode()})
    transcripts_ingest()
    for request_id, expected in (("req_text", "Complete this: G&#x27;day"), ("req_parts", "part one")):
        row = Transcript.objects.get(request_id=request_id)
        page = owner_client.get(f"/t/{acme.slug}/transcripts/{row.pk}/")
        assert page.status_code == 200 and expected in page.content.decode()
