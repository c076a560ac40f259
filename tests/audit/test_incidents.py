"""The breach register (R-NDB-1): the 30-day assessment clock, a decision required before closing, a blast radius
from the usage records that lists exactly the tenants touched, audited and emailed tenant notices, staff only."""

from __future__ import annotations

import uuid
from datetime import timedelta

import pytest
from django.core import mail
from django.core.exceptions import ValidationError
from django.utils import timezone

from audit import incident_services as services
from audit.models import AuditEntry, Incident, IncidentNotification
from billing.incident_reads import blast_radius
from billing.models import UsageEvent

pytestmark = pytest.mark.django_db


def _usage(tenant, *, key_id: str, backend: str = "vllm-a", endpoint: str = "chat.completions", at=None):
    return UsageEvent.objects.create(request_id=uuid.uuid4().hex, tenant=tenant, key_id=key_id, endpoint=endpoint,
                                     model="mistral-7b", backend=backend, status=200,
                                     created_at=at or timezone.now() - timedelta(minutes=30))


def _open(staff, **scope) -> Incident:
    return services.incident_open(actor=staff, title="Leaked key", summary="A key was posted publicly.",
                                  became_aware_at=timezone.now() - timedelta(days=2), **scope)


def test_opening_starts_a_30_day_assessment_clock_shown_with_days_left(staff, staff_client):
    incident = _open(staff)
    assert incident.assessment_due_at == incident.became_aware_at + timedelta(days=30)
    assert incident.days_left() == 27  # aware two days ago: 27 whole days and some hours remain
    page = staff_client.get(f"/staff/incidents/{incident.pk}/").content.decode()
    assert "27 days left" in page and "Assessment due" in page
    assert AuditEntry.objects.filter(action="incident.opened", target_id=str(incident.pk)).exists()


def test_an_overdue_assessment_shows_overdue(staff, staff_client):
    incident = services.incident_open(actor=staff, title="Old", summary="s",
                                      became_aware_at=timezone.now() - timedelta(days=31))
    assert incident.days_left() < 0
    assert "overdue" in staff_client.get(f"/staff/incidents/{incident.pk}/").content.decode()


def test_closing_is_refused_without_a_decision_and_reasons(staff, staff_client):
    incident = _open(staff)
    with pytest.raises(ValidationError, match="Decide whether"):
        services.incident_close(incident=incident, actor=staff)
    response = staff_client.post(f"/staff/incidents/{incident.pk}/close/")
    assert response.status_code == 409
    incident.refresh_from_db()
    assert incident.status == Incident.Status.ASSESSING and incident.closed_at is None

    with pytest.raises(ValidationError, match="reasons"):
        services.incident_decide(incident=incident, actor=staff, decision="not_eligible", reasons="  ")
    assert staff_client.post(f"/staff/incidents/{incident.pk}/decide/",
                             {"decision": "maybe", "reasons": "x"}).status_code == 400

    response = staff_client.post(f"/staff/incidents/{incident.pk}/decide/",
                                 {"decision": "not_eligible", "reasons": "Key revoked within minutes; no access."})
    assert response.status_code == 302
    assert staff_client.post(f"/staff/incidents/{incident.pk}/close/").status_code == 302
    incident.refresh_from_db()
    assert incident.status == Incident.Status.CLOSED and incident.closed_at is not None
    actions = list(AuditEntry.objects.filter(target_id=str(incident.pk)).order_by("id")
                   .values_list("action", flat=True))
    assert actions == ["incident.opened", "incident.decided", "incident.closed"]
    with pytest.raises(ValidationError, match="closed"):
        services.incident_update(incident=incident, actor=staff, changes={"title": "Changed"})


def test_blast_radius_lists_exactly_the_tenants_and_keys_touched(acme, bluegum):
    now = timezone.now()
    _usage(acme, key_id="acmekey1", backend="vllm-a")
    _usage(acme, key_id="acmekey2", backend="vllm-a")
    _usage(acme, key_id="acmekey3", backend="vllm-b")
    _usage(bluegum, key_id="bluekey1", backend="vllm-b")
    _usage(bluegum, key_id="bluekey2", backend="vllm-a", at=now - timedelta(days=3))  # outside the window
    window = {"since": now - timedelta(hours=1), "until": now}

    by_backend = blast_radius(backend="vllm-a", **window)
    assert [(t.tenant, t.key_ids, t.requests) for t in by_backend] == [(acme, ["acmekey1", "acmekey2"], 2)]
    by_key = blast_radius(key_id="bluekey1", **window)
    assert [(t.tenant, t.key_ids) for t in by_key] == [(bluegum, ["bluekey1"])]
    by_component = blast_radius(component="chat.completions", **window)
    assert {t.tenant for t in by_component} == {acme, bluegum}
    assert blast_radius(component="embeddings", **window) == []
    with pytest.raises(ValueError, match="Name a key id"):
        blast_radius(**window)
    with pytest.raises(ValueError, match="end after"):
        blast_radius(backend="vllm-a", since=now, until=now - timedelta(hours=1))


def test_notify_previews_then_emails_and_audits_each_tenant(staff, staff_client, acme, bluegum, alice,
                                                           django_capture_on_commit_callbacks):
    now = timezone.now()
    _usage(acme, key_id="acmekey1", backend="vllm-a")
    _usage(bluegum, key_id="bluekey1", backend="vllm-b")
    incident = _open(staff, window_start=now - timedelta(hours=1), window_end=now, backend="vllm-a")

    preview = staff_client.get(f"/staff/incidents/{incident.pk}/notify/").content.decode()
    assert "Acme Contact" in preview and "wtl_acmekey1" in preview and "billing@acme.example" in preview
    assert "Bluegum" not in preview  # not in the blast radius
    assert not mail.outbox

    assert staff_client.post(f"/staff/incidents/{incident.pk}/notify/", {}).status_code == 400
    # A tenant outside the blast radius cannot be picked.
    assert staff_client.post(f"/staff/incidents/{incident.pk}/notify/",
                             {"tenants": [bluegum.slug]}).status_code == 400
    with django_capture_on_commit_callbacks(execute=True):
        response = staff_client.post(f"/staff/incidents/{incident.pk}/notify/", {"tenants": [acme.slug]})
    assert response.status_code == 302
    assert len(mail.outbox) == 1
    message = mail.outbox[0]
    assert sorted(message.to) == ["alice@acme.example", "billing@acme.example"]
    assert "Acme Contact" in message.subject and "A key was posted publicly." in message.body
    notification = IncidentNotification.objects.get(incident=incident)
    assert notification.tenant == acme and notification.body == message.body
    entry = AuditEntry.objects.get(action="incident.tenant_notified")
    assert entry.tenant == acme and entry.actor == staff and entry.data["recipients"] == 2


def test_a_failed_notify_sends_nothing(staff, acme, django_capture_on_commit_callbacks):
    incident = _open(staff)
    notice = services.incident_notice(incident=incident, tenant=acme, recipients=[], key_ids=[])
    with django_capture_on_commit_callbacks(execute=True), pytest.raises(ValidationError, match="No billing"):
        services.incident_notify(incident=incident, notices=[notice], actor=staff)
    assert not mail.outbox and not IncidentNotification.objects.exists()


def test_opening_needs_a_title_summary_and_a_past_awareness_time(staff, staff_client):
    response = staff_client.post("/staff/incidents/new/", {"title": "", "summary": "",
                                                           "became_aware_at": "not a date"})
    assert response.status_code == 400
    future = (timezone.localtime() + timedelta(days=1)).strftime("%Y-%m-%dT%H:%M")
    response = staff_client.post("/staff/incidents/new/", {"title": "t", "summary": "s", "became_aware_at": future})
    assert response.status_code == 400 and "future" in response.content.decode()
    assert not Incident.objects.exists()
    past = (timezone.localtime() - timedelta(hours=1)).strftime("%Y-%m-%dT%H:%M")
    response = staff_client.post("/staff/incidents/new/", {"title": "t", "summary": "s", "became_aware_at": past,
                                                           "key_id": "wtl_abc123_secretpart"})
    assert response.status_code == 302
    assert Incident.objects.get().key_id == "abc123"  # a pasted key keeps only its id, never the secret


@pytest.mark.parametrize("path", ["/staff/incidents/", "/staff/incidents/new/"])
def test_incident_pages_are_staff_only(client, alice, acme, staff, path):
    from tests.conftest import sign_in

    incident = _open(staff)
    anonymous = client.get(path)
    assert anonymous.status_code == 302 and "/accounts/login/" in anonymous["Location"]
    sign_in(client, alice)
    assert client.get(path).status_code == 404
    assert client.get(f"/staff/incidents/{incident.pk}/").status_code == 404
    assert client.post(f"/staff/incidents/{incident.pk}/close/").status_code == 404


def test_staff_navigation_links_the_register(staff_client, staff):
    page = staff_client.get("/staff/incidents/").content.decode()
    assert 'href="/staff/incidents/"' in page and "Incident register" in page


def test_what_is_known_can_be_updated_and_is_audited(staff, staff_client, acme):
    incident = _open(staff)
    _usage(acme, key_id="acmekey1", backend="vllm-a")
    start = (timezone.localtime() - timedelta(hours=2)).strftime("%Y-%m-%dT%H:%M")
    end = timezone.localtime().strftime("%Y-%m-%dT%H:%M")
    aware = timezone.localtime(incident.became_aware_at).strftime("%Y-%m-%dT%H:%M")
    form = {"title": incident.title, "summary": incident.summary, "became_aware_at": aware,
            "window_start": start, "window_end": end, "backend": "vllm-a"}
    assert staff_client.post(f"/staff/incidents/{incident.pk}/", {**form, "window_end": start}).status_code == 400
    assert staff_client.post(f"/staff/incidents/{incident.pk}/", form).status_code == 302
    incident.refresh_from_db()
    assert incident.backend == "vllm-a" and incident.window_start is not None
    entry = AuditEntry.objects.get(action="incident.updated")
    assert set(entry.data["changed"]) >= {"backend", "window_start", "window_end"}
    page = staff_client.get(f"/staff/incidents/{incident.pk}/").content.decode()
    assert "acmekey1" in page and "End customers are those the tenant named" in page
