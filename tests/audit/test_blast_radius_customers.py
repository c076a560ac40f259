"""R-NDB-1 with R-AUD-1: the breach register's blast radius names the end customers touched (from the access
records' customer ids), per tenant, on the staff page and as an audited CSV export; staff only."""

from __future__ import annotations

import csv
import io
import uuid
from datetime import timedelta

import pytest
from django.utils import timezone

from audit import incident_services as services
from audit.models import AuditEntry
from billing.incident_reads import blast_radius, radius_customers
from billing.models import UsageEvent

pytestmark = pytest.mark.django_db


def _usage(tenant, *, key_id: str, customer: str = "", backend: str = "vllm-a", at=None):
    return UsageEvent.objects.create(request_id=uuid.uuid4().hex, tenant=tenant, key_id=key_id,
                                     endpoint="chat.completions", model="m", backend=backend, status=200,
                                     customer_id=customer, created_at=at or timezone.now() - timedelta(minutes=30))


@pytest.fixture
def incident(staff, acme, bluegum):
    now = timezone.now()
    _usage(acme, key_id="acmekey1", customer="acct-1")
    _usage(acme, key_id="acmekey1", customer="acct-1")
    _usage(acme, key_id="acmekey2", customer="=HYPERLINK(1)")  # a tenant's text, written into a spreadsheet
    _usage(acme, key_id="acmekey2")  # named no customer
    _usage(acme, key_id="acmekey3", customer="acct-9", backend="vllm-b")  # another backend
    _usage(bluegum, key_id="bluekey1", customer="acct-1")  # the same id at another tenant is another person
    _usage(bluegum, key_id="bluekey1", customer="old", at=now - timedelta(days=3))  # outside the window
    return services.incident_open(actor=staff, title="Backend compromised", summary="vllm-a exposed.",
                                  became_aware_at=now - timedelta(days=1), window_start=now - timedelta(hours=1),
                                  window_end=now, backend="vllm-a")


def test_the_radius_names_each_tenants_end_customers(incident, acme, bluegum):
    radius = blast_radius(since=incident.window_start, until=incident.window_end, backend="vllm-a")
    by_tenant = {t.tenant: t for t in radius}
    assert set(by_tenant) == {acme, bluegum}
    assert by_tenant[acme].customer_ids == ["=HYPERLINK(1)", "acct-1"] and by_tenant[acme].customers == 2
    assert by_tenant[acme].requests == 4 and not by_tenant[acme].customer_ids_truncated
    assert by_tenant[bluegum].customer_ids == ["acct-1"]
    by_key = blast_radius(since=incident.window_start, until=incident.window_end, key_id="acmekey1")
    assert [(t.tenant, t.customer_ids) for t in by_key] == [(acme, ["acct-1"])]
    rows = list(radius_customers(since=incident.window_start, until=incident.window_end, backend="vllm-a"))
    assert sorted((slug, customer, n) for slug, customer, n, _first, _last in rows) == [
        (acme.slug, "=HYPERLINK(1)", 1), (acme.slug, "acct-1", 2), (bluegum.slug, "acct-1", 1)]


def test_the_radius_shows_a_bounded_list_and_counts_the_rest(incident, acme, monkeypatch):
    from billing import incident_reads

    monkeypatch.setattr(incident_reads, "CUSTOMER_IDS_SHOWN", 1)
    [touched] = [t for t in blast_radius(since=incident.window_start, until=incident.window_end, backend="vllm-a")
                 if t.tenant == acme]
    assert touched.customer_ids == ["=HYPERLINK(1)"] and touched.customers == 2 and touched.customer_ids_truncated


def test_staff_see_the_customers_and_export_them_audited(incident, staff, staff_client, acme, bluegum):
    page = staff_client.get(f"/staff/incidents/{incident.pk}/").content.decode()
    assert "acct-1" in page and "acct-9" not in page and "old" not in page.split("Blast radius")[1].split("</table>")[0]
    response = staff_client.get(f"/staff/incidents/{incident.pk}/customers.csv")
    assert response.status_code == 200 and response["Content-Type"].startswith("text/csv")
    rows = list(csv.reader(io.StringIO(response.content.decode())))
    assert rows[0] == ["tenant", "customer_id", "requests", "first_at", "last_at"]
    assert sorted((r[0], r[1], r[2]) for r in rows[1:]) == sorted([
        (acme.slug, "'=HYPERLINK(1)", "1"), (acme.slug, "acct-1", "2"), (bluegum.slug, "acct-1", "1")])
    entry = AuditEntry.objects.get(action="incident.customers_exported")
    assert entry.actor == staff and entry.target_id == str(incident.pk) and entry.data == {"count": 3, "tenants": 2}
    assert "acct-1" not in str(entry.data)  # the trail records the export, not the identifiers


def test_an_incident_without_a_window_has_no_export(staff, staff_client):
    bare = services.incident_open(actor=staff, title="t", summary="s", became_aware_at=timezone.now())
    assert staff_client.get(f"/staff/incidents/{bare.pk}/customers.csv").status_code == 409
    assert not AuditEntry.objects.filter(action="incident.customers_exported").exists()


def test_the_customer_export_is_staff_only(incident, client, alice, acme):
    from tests.conftest import sign_in

    path = f"/staff/incidents/{incident.pk}/customers.csv"
    anonymous = client.get(path)
    assert anonymous.status_code == 302 and "/accounts/login/" in anonymous["Location"]
    sign_in(client, alice)  # an owner of a tenant in the radius is still not staff
    assert client.get(path).status_code == 404
    assert client.get(f"/staff/incidents/{incident.pk}/").status_code == 404
    assert not AuditEntry.objects.filter(action="incident.customers_exported").exists()
