"""The staff console: every tenant with search and status filters, a detail page, suspension and reactivation
with a reason, and explicit, audited, time-boxed "act as tenant" sessions."""

from __future__ import annotations

import time

import pytest

from audit.models import AuditEntry
from tenants import keys
from tenants.access import SESSION_ACT_AS
from tenants.models import ApiKey, Tenant
from tests.conftest import published_caller

pytestmark = pytest.mark.django_db


def test_tenant_list_searches_and_filters(staff_client, acme, bluegum):
    page = staff_client.get("/staff/").content.decode()
    assert "Acme Contact" in page and "Bluegum Calls" in page
    page = staff_client.get("/staff/?q=bluegum").content.decode()
    assert "Bluegum Calls" in page and "Acme Contact" not in page
    page = staff_client.get("/staff/?q=alice@acme").content.decode()  # by a member's email
    assert "Acme Contact" in page and "Bluegum Calls" not in page
    Tenant.objects.filter(pk=acme.pk).update(status="suspended")
    page = staff_client.get("/staff/?status=suspended").content.decode()
    assert "Acme Contact" in page and "Bluegum Calls" not in page
    partial = staff_client.get("/staff/?q=acme", HTTP_HX_REQUEST="true").content.decode()
    assert "<table" in partial and "<html" not in partial  # htmx swaps only the table
    assert staff_client.get("/staff/?status=bogus").status_code == 400


def test_tenant_detail_shows_members_keys_usage_limits_and_history(staff_client, acme, unthrottled):
    from tenants.services import api_key_create

    unthrottled(acme)  # the key's limits are above the Trial plan's

    api_key_create(tenant=acme, name="ivr", limits={"rpm_limit": 120, "tpm_limit": 400000})
    page = staff_client.get(f"/staff/tenants/{acme.slug}/").content.decode()
    for text in ("alice@acme.example", "ivr", "120", "400000", "Last 30 days", "Status history", "Plan"):
        assert text in page, text
    assert staff_client.get("/staff/tenants/no-such-tenant/").status_code == 404


def test_suspend_and_reactivate_with_a_reason(staff_client, staff, acme, issue_key,
                                              django_capture_on_commit_callbacks):
    key_id = keys.parse_key(issue_key(acme))[0]
    with django_capture_on_commit_callbacks(execute=True):
        response = staff_client.post(f"/staff/tenants/{acme.slug}/status/",
                                     {"action": "suspend", "reason": "Card declined twice"})
    assert response.status_code == 302
    acme.refresh_from_db()
    assert (acme.status, acme.status_reason) == ("suspended", "Card declined twice")
    assert published_caller(key_id).tenant_status == "suspended"
    with django_capture_on_commit_callbacks(execute=True):
        staff_client.post(f"/staff/tenants/{acme.slug}/status/", {"action": "reactivate", "reason": "Paid"})
    acme.refresh_from_db()
    assert acme.status == "active"
    entries = list(AuditEntry.objects.filter(action__startswith="tenant.status.").order_by("created_at", "id"))
    assert [(e.action, e.actor, e.data["reason"]) for e in entries] == [
        ("tenant.status.suspended", staff, "Card declined twice"), ("tenant.status.active", staff, "Paid")]
    page = staff_client.get(f"/staff/tenants/{acme.slug}/").content.decode()
    assert "Card declined twice" in page and "Paid" in page  # the status history


@pytest.mark.parametrize("data", [{"action": "suspend", "reason": ""}, {"action": "suspend", "reason": "   "},
                                  {"action": "delete", "reason": "x"}, {}])
def test_malformed_status_change_is_refused(staff_client, acme, data):
    response = staff_client.post(f"/staff/tenants/{acme.slug}/status/", data)
    assert response.status_code == 400
    acme.refresh_from_db()
    assert acme.status == "active"


def test_act_as_is_explicit_audited_and_limited_to_support(staff_client, staff, acme, issue_key,
                                                            django_capture_on_commit_callbacks):
    key_id = keys.parse_key(issue_key(acme))[0]
    # Not a member: nothing of Acme is visible before the session starts.
    assert staff_client.get(f"/t/{acme.slug}/").status_code == 404
    response = staff_client.post(f"/staff/tenants/{acme.slug}/act-as/", {"reason": "Ticket 4711"})
    assert response.status_code == 302 and response["Location"] == f"/t/{acme.slug}/"
    start = AuditEntry.objects.get(action="staff.act_as.start")
    assert (start.actor, start.tenant, start.data["reason"]) == (staff, acme, "Ticket 4711")
    page = staff_client.get(f"/t/{acme.slug}/keys/").content.decode()
    assert "You are acting as" in page and "Ticket 4711" in page
    assert staff_client.get(f"/t/{acme.slug}/members/").status_code == 200
    # Support can revoke a key in an incident, but never create one or change the team.
    assert staff_client.get(f"/t/{acme.slug}/keys/new/").status_code == 403
    invite = {"email": "x@y.example", "role": "admin"}
    assert staff_client.post(f"/t/{acme.slug}/invitations/", invite).status_code == 403
    with django_capture_on_commit_callbacks(execute=True):
        assert staff_client.post(f"/t/{acme.slug}/keys/{key_id}/revoke/").status_code == 302
    revoke = AuditEntry.objects.get(action="api_key.revoke")
    assert revoke.actor == staff and revoke.data["acting_as_staff"] is True
    staff_client.post("/staff/act-as/end/")
    assert AuditEntry.objects.filter(action="staff.act_as.end", actor=staff).exists()
    assert staff_client.get(f"/t/{acme.slug}/").status_code == 404


def test_act_as_needs_a_reason_and_a_recent_reauthentication(staff, acme):
    from django.test import Client

    from tests.conftest import sign_in

    client = sign_in(Client(), staff, passkey_used=True)
    response = client.post(f"/staff/tenants/{acme.slug}/act-as/", {"reason": ""})
    assert response.status_code == 400
    client = sign_in(Client(), staff, reauthenticated=False, passkey_used=True)
    response = client.post(f"/staff/tenants/{acme.slug}/act-as/", {"reason": "Ticket 1"})
    assert response["Location"].startswith("/accounts/reauthenticate/")
    assert not AuditEntry.objects.filter(action="staff.act_as.start").exists()


def test_act_as_session_expires(staff_client, acme):
    staff_client.post(f"/staff/tenants/{acme.slug}/act-as/", {"reason": "Ticket 9"})
    session = staff_client.session
    grant = session[SESSION_ACT_AS]
    grant["expires"] = time.time() - 1
    session[SESSION_ACT_AS] = grant
    session.save()
    assert staff_client.get(f"/t/{acme.slug}/").status_code == 404


def test_only_support_actions_are_possible_while_acting_as(staff_client, acme):
    staff_client.post(f"/staff/tenants/{acme.slug}/act-as/", {"reason": "Ticket 9"})
    assert staff_client.post(f"/t/{acme.slug}/settings/", {"name": "Hijacked"}).status_code == 403
    assert not ApiKey.objects.exists()


def test_django_admin_shows_tenants_read_only(staff_client, acme, issue_key):
    issue_key(acme)
    page = staff_client.get("/staff/django-admin/tenants/tenant/")
    assert page.status_code == 200 and "Acme Contact" in page.content.decode()
    key = ApiKey.objects.get()
    detail = staff_client.get(f"/staff/django-admin/tenants/apikey/{key.pk}/change/").content.decode()
    assert key.secret_hash not in detail
    assert staff_client.get("/staff/django-admin/tenants/tenant/add/").status_code == 403
