"""Staff "act as" sessions end in the audit trail exactly once, however they end: ended by the staff member,
replaced by another, noticed expired on the staff member's next request, or closed by the periodic job when
nobody comes back."""

from __future__ import annotations

from datetime import timedelta

import pytest
from django.conf import settings
from django.utils import timezone
from django.utils.module_loading import import_string

from audit.models import AuditEntry
from tenants import tasks
from tenants.models import SupportSession

pytestmark = pytest.mark.django_db


def _start(staff_client, tenant, reason: str = "Ticket 77") -> SupportSession:
    response = staff_client.post(f"/staff/tenants/{tenant.slug}/act-as/", {"reason": reason})
    assert response.status_code == 302 and response["Location"] == f"/t/{tenant.slug}/"
    return SupportSession.objects.get(reason=reason)


def _run_out(session: SupportSession) -> None:
    """The session's hour passed a minute ago."""
    now = timezone.now()
    SupportSession.objects.filter(pk=session.pk).update(started_at=now - timedelta(minutes=61),
                                                        expires_at=now - timedelta(minutes=1))


def _ends(session: SupportSession) -> list[AuditEntry]:
    return list(AuditEntry.objects.filter(action="staff.act_as.end", data__session=str(session.pk)))


def test_an_expired_session_is_closed_once_on_the_staff_members_next_request(staff_client, staff, acme):
    session = _start(staff_client, acme)
    assert staff_client.get(f"/t/{acme.slug}/").status_code == 200
    _run_out(session)
    assert staff_client.get(f"/t/{acme.slug}/").status_code == 404
    [end] = _ends(session)
    assert (end.actor, end.tenant, end.data["end"], end.ip) == (staff, acme, "expired", "127.0.0.1")
    assert end.data["duration_s"] == 3600  # its full length, not the time until someone noticed
    # Neither another request nor the job writes a second one.
    assert staff_client.get(f"/t/{acme.slug}/").status_code == 404
    assert tasks.close_expired_support_sessions() == 0
    assert len(_ends(session)) == 1
    assert SupportSession.objects.get(pk=session.pk).end == "expired"


def test_an_expired_session_nobody_returns_to_is_closed_by_the_periodic_job(staff_client, staff, acme):
    session = _start(staff_client, acme)
    _run_out(session)
    assert tasks.close_expired_support_sessions() == 1
    [end] = _ends(session)
    assert (end.actor, end.tenant, end.data["end"], end.ip) == (staff, acme, "expired", None)
    assert tasks.close_expired_support_sessions() == 0
    # The staff member coming back later changes nothing: the session is over, and ended once.
    assert staff_client.get(f"/t/{acme.slug}/").status_code == 404
    assert len(_ends(session)) == 1


def test_the_job_leaves_running_sessions_alone(staff_client, acme):
    session = _start(staff_client, acme)
    assert tasks.close_expired_support_sessions() == 0
    assert _ends(session) == [] and staff_client.get(f"/t/{acme.slug}/").status_code == 200


def test_a_session_ended_by_the_staff_member_is_ended_once(staff_client, staff, acme):
    session = _start(staff_client, acme)
    staff_client.post("/staff/act-as/end/")
    [end] = _ends(session)
    assert end.data["end"] == "ended" and end.actor == staff
    _run_out(session)
    assert tasks.close_expired_support_sessions() == 0
    staff_client.post("/staff/act-as/end/")
    assert len(_ends(session)) == 1


def test_starting_another_session_ends_the_first(staff_client, acme, bluegum):
    first = _start(staff_client, acme)
    second = _start(staff_client, bluegum, reason="Ticket 78")
    assert [e.data["end"] for e in _ends(first)] == ["replaced"] and _ends(second) == []
    assert staff_client.get(f"/t/{acme.slug}/").status_code == 404
    assert staff_client.get(f"/t/{bluegum.slug}/").status_code == 200


def test_the_job_runs_every_minute():
    entry = settings.CELERY_BEAT_SCHEDULE["close-support-sessions"]
    assert import_string(entry["task"]) is tasks.close_expired_support_sessions and entry["schedule"] <= 60
