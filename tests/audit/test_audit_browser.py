"""The audit browser: staff read and export every tenant's trail; owners and admins their own tenant's only;
filters, keyset pages and bounded exports; malformed filters are a 400, not a 500."""

from __future__ import annotations

import csv
import io
import json

import pytest
from django.test import Client
from django.urls import reverse

from audit.models import AuditEntry
from audit.services import audit_seal, record
from tests.conftest import sign_in


def _trail(acme, bluegum, alice) -> None:
    record(action="key.created", actor=alice, tenant=acme, data={"key_id": "abc123"})
    record(action="member.role_changed", actor=alice, tenant=acme, data={"to": "admin"})
    record(action="key.revoked", tenant=bluegum, data={"key_id": "zzz999"})
    record(action="login.failed", data={"identifier": "x"})
    audit_seal()


def staff_url(**query) -> str:
    return reverse("staff_audit") + ("?" + "&".join(f"{k}={v}" for k, v in query.items()) if query else "")


def tenant_url(tenant) -> str:
    return reverse("tenant_audit", args=[tenant.slug])


def test_staff_see_every_tenants_trail_and_filter_by_tenant_actor_and_action(staff_client, acme, bluegum, alice):
    _trail(acme, bluegum, alice)
    page = staff_client.get(staff_url()).content.decode()
    assert "key.created" in page and "key.revoked" in page and "login.failed" in page
    by_tenant = staff_client.get(staff_url(tenant=bluegum.slug)).content.decode()
    assert "key.revoked" in by_tenant and "key.created" not in by_tenant
    by_actor = staff_client.get(staff_url(actor=alice.email)).content.decode()
    assert "member.role_changed" in by_actor and "key.revoked" not in by_actor
    by_prefix = staff_client.get(staff_url(action="key.")).content.decode()
    assert "key.created" in by_prefix and "key.revoked" in by_prefix and "member.role_changed" not in by_prefix
    system = staff_client.get(staff_url(actor="system")).content.decode()
    assert "login.failed" in system and "key.created" not in system


def test_owner_sees_only_their_own_tenants_trail(owner_client, acme, bluegum, alice):
    _trail(acme, bluegum, alice)
    response = owner_client.get(tenant_url(acme))
    page = response.content.decode()
    assert response.status_code == 200
    assert "key.created" in page and "key.revoked" not in page and "login.failed" not in page
    assert reverse("tenant_audit", args=[acme.slug]) in page  # linked from the console's navigation


def test_another_tenants_trail_is_a_404(owner_client, acme, bluegum):
    assert owner_client.get(tenant_url(bluegum)).status_code == 404


@pytest.mark.parametrize(("role", "status"), [("admin", 200), ("developer", 403), ("billing", 403)])
def test_only_owners_and_admins_see_the_tenant_trail(acme, member_of, role, status):
    user = member_of(acme, role)
    assert sign_in(Client(), user).get(tenant_url(acme)).status_code == status


def test_anonymous_is_sent_to_sign_in_and_members_are_not_staff(client, owner_client, acme):
    for url in (tenant_url(acme), staff_url()):
        response = client.get(url)
        assert response.status_code == 302 and "/accounts/login/" in response["Location"]
    assert owner_client.get(staff_url()).status_code == 404


@pytest.mark.parametrize("query", [
    {"since": "not-a-time"}, {"action": "DROP TABLE"}, {"actor": "bad actor!"}, {"after": "garbage"},
    {"since": "2026-12-02T00:00", "until": "2026-12-01T00:00"}, {"export": "xml"}, {"tenant": "no-such-tenant"},
    {"action": "x" * 500},
])
def test_malformed_filters_are_a_400(staff_client, query):
    response = staff_client.get(reverse("staff_audit"), query)
    assert response.status_code == 400
    assert "errorlist" in response.content.decode() or 'role="alert"' in response.content.decode()


def test_pages_walk_every_entry_once_newest_first(staff_client, acme):
    for i in range(120):
        record(action=f"test.page.{i}", tenant=acme)
    seen, url = [], staff_url(tenant=acme.slug)
    while url:
        response = staff_client.get(url)
        seen += [e.id for e in response.context["entries"]]
        cursor = response.context["next_cursor"]
        url = staff_url(tenant=acme.slug, after=cursor) if cursor else None
    expected = list(AuditEntry.objects.filter(tenant=acme).order_by("-created_at", "-id").values_list("id", flat=True))
    assert seen == expected and len(seen) > 120  # three pages and more (acme's own creation is audited too)


def test_csv_export_of_the_filtered_range_is_audited(staff_client, staff, acme, bluegum, alice):
    _trail(acme, bluegum, alice)
    response = staff_client.get(staff_url(tenant=acme.slug, export="csv"))
    assert response.status_code == 200 and response["Content-Type"].startswith("text/csv")
    rows = list(csv.DictReader(io.StringIO(response.content.decode())))
    actions = {r["action"] for r in rows}
    assert {"key.created", "member.role_changed"} <= actions and "key.revoked" not in actions
    assert all(len(r["hash"]) == 64 for r in rows)
    exported = AuditEntry.objects.get(action="audit.exported")
    assert exported.actor_id == staff.id and exported.data["count"] == len(rows) and exported.data["format"] == "csv"


def test_json_export_is_bounded(owner_client, acme, monkeypatch):
    import audit.selectors

    monkeypatch.setattr(audit.selectors.audit_export, "__kwdefaults__", {"limit": 3})
    for i in range(5):
        record(action=f"test.export.{i}", tenant=acme)
    response = owner_client.get(tenant_url(acme) + "?export=json")
    body = json.loads(response.content)
    assert response.status_code == 200 and len(body["entries"]) == 3 and body["truncated"] is True
    assert response["X-Wattle-Truncated"] == "true"


def test_csv_cells_that_look_like_formulas_are_quoted(staff_client, acme):
    record(action="test.formula", tenant=acme, data={}, request=None)
    AuditEntry.objects.create(action="test.formula2", actor_label="=HYPERLINK(\"x\")", tenant=acme)
    rows = list(csv.DictReader(io.StringIO(staff_client.get(staff_url(export="csv")).content.decode())))
    assert any(r["actor_label"] == "'=HYPERLINK(\"x\")" for r in rows)
