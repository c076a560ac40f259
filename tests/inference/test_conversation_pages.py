"""The console's conversation pages and the management API's conversations: what each role sees, another tenant's
conversation is a 404, filters, keyset pages, the CSV, and the sentiment chart."""

from __future__ import annotations

import csv
import io
from datetime import UTC, datetime, timedelta

import pytest
from django.test import Client
from django.urls import reverse

from inference.analytics import RUBRIC, RUBRIC_VERSION
from inference.models import Conversation, ConversationAnalysis
from tests.conftest import sign_in

pytestmark = pytest.mark.django_db
T0 = datetime(2026, 11, 30, 12, 0, tzinfo=UTC)


def make_conversation(tenant, conversation_id: str, *, minutes: int = 0, channel: str = "webchat",
                      escalated: bool = False, qa: int | None = None, summary: str = "Customer's modem replaced.",
                      trail=(-0.5, 0.1, 0.6)) -> Conversation:
    closed = T0 - timedelta(minutes=minutes)
    conversation = Conversation.objects.create(
        tenant=tenant, conversation_id=conversation_id, key_id="abcdefghijkl", model="m", channel=channel,
        language="en-AU", customer_id="cust-7", turn_count=4, sentiment_trail=list(trail), escalated=escalated,
        escalation_reason="trigger_phrase" if escalated else "", opened_at=closed - timedelta(minutes=5),
        closed_at=closed, metadata={"queue": "=cmd()"}, sampled=qa is not None)
    if qa is not None:
        ConversationAnalysis.objects.create(
            tenant=tenant, conversation=conversation, status="done", summary=summary, qa_score=qa,
            rubric={item: {"score": qa, "reason": f"{item} was fine"} for item in RUBRIC},
            rubric_version=RUBRIC_VERSION, model="m", content_hash="0" * 64, attempts=1)
    return conversation


def list_url(tenant, **query) -> str:
    from urllib.parse import urlencode

    return reverse("tenant_conversations", args=[tenant.slug]) + ("?" + urlencode(query) if query else "")


@pytest.fixture
def reviewer_client(acme, member_of):
    """An admin: the role that reviews its contact centre's conversations (with its second factor)."""
    return sign_in(Client(), member_of(acme, "admin"))


# --- console -------------------------------------------------------------------------------------
def test_agent_lists_and_opens_a_conversation(acme, reviewer_client):
    conversation = make_conversation(acme, "conv-a", qa=82, escalated=True)
    response = reviewer_client.get(list_url(acme))
    assert response.status_code == 200
    assert b"conv-a" in response.content and b"82" in response.content
    detail = reviewer_client.get(reverse("tenant_conversation_detail", args=[acme.slug, conversation.pk]))
    assert detail.status_code == 200
    page = detail.content.decode()
    assert "modem replaced" in page and "empathy was fine" in page and "trigger_phrase" in page
    assert 'class="sentiment-chart" role="img"' in page
    assert "from -0.50 to +0.60" in page  # the chart's label states the trail
    assert page.count('class="sentiment-dot"') == 3


def test_another_tenants_conversation_is_a_404(acme, bluegum, reviewer_client):
    theirs = make_conversation(bluegum, "conv-b", qa=50)
    response = reviewer_client.get(reverse("tenant_conversation_detail", args=[acme.slug, theirs.pk]))
    assert response.status_code == 404
    assert reviewer_client.get(list_url(bluegum)).status_code == 404
    assert b"conv-b" not in reviewer_client.get(list_url(acme)).content


@pytest.mark.parametrize("role", ["billing", "developer", "agent"])
def test_roles_without_the_permission_are_refused(acme, member_of, role):
    client = sign_in(Client(), member_of(acme, role))
    assert client.get(list_url(acme)).status_code == 403


def test_owner_may_view(acme, owner_client):
    make_conversation(acme, "conv-o")
    assert owner_client.get(list_url(acme)).status_code == 200


def test_signed_out_is_sent_to_sign_in(acme):
    response = Client().get(list_url(acme))
    assert response.status_code == 302 and "/accounts/login/" in response["Location"]


def test_filters(acme, reviewer_client):
    make_conversation(acme, "low-sms", channel="sms", qa=30, minutes=1)
    make_conversation(acme, "high-web", qa=90, escalated=True, minutes=2)
    make_conversation(acme, "unsampled", minutes=3)
    body = reviewer_client.get(list_url(acme, qa_min=50)).content
    assert b"high-web" in body and b"low-sms" not in body and b"unsampled" not in body
    body = reviewer_client.get(list_url(acme, channel="sms")).content
    assert b"low-sms" in body and b"high-web" not in body
    body = reviewer_client.get(list_url(acme, escalated="no")).content
    assert b"high-web" not in body and b"unsampled" in body
    body = reviewer_client.get(list_url(acme, since="2026-12-01")).content
    assert b"No conversations match" in body


def test_malformed_filters_are_form_errors(acme, reviewer_client):
    assert reviewer_client.get(list_url(acme, qa_min=101)).status_code == 400
    assert reviewer_client.get(list_url(acme, qa_min=60, qa_max=40)).status_code == 400
    assert reviewer_client.get(list_url(acme, after="nonsense")).status_code == 400
    assert reviewer_client.get(list_url(acme, channel="pigeon")).status_code == 400


def test_keyset_pages(acme, reviewer_client, monkeypatch):
    from inference import analytics_reads

    monkeypatch.setattr(analytics_reads, "PAGE_SIZE", 2)
    for i in range(5):
        make_conversation(acme, f"page-{i}", minutes=i)
    seen, url = [], list_url(acme)
    while url:
        response = reviewer_client.get(url)
        rows = [c for c in (f"page-{i}" for i in range(5)) if c.encode() in response.content]
        seen += rows
        cursor = response.context["next_cursor"]
        url = list_url(acme, after=cursor) if cursor else None
    assert seen == [f"page-{i}" for i in range(5)]


def test_csv_export(acme, reviewer_client):
    make_conversation(acme, "csv-1", qa=75, escalated=True)
    make_conversation(acme, "csv-2", minutes=5)
    response = reviewer_client.get(list_url(acme, export="csv"))
    assert response.status_code == 200 and response["Content-Type"].startswith("text/csv")
    content = b"".join(response.streaming_content).decode()
    assert "modem" not in content and "fine" not in content  # summaries and reasons stay on the detail page
    rows = list(csv.reader(io.StringIO(content)))
    assert rows[0][0] == "conversation_id" and [r[0] for r in rows[1:]] == ["csv-1", "csv-2"]
    first = dict(zip(rows[0], rows[1], strict=True))
    assert first["qa_score"] == "75" and first["escalated"] == "yes" and first["sentiment_min"] == "-0.500"
    assert rows[2][rows[0].index("analysis_status")] == "not sampled"


# --- management API ------------------------------------------------------------------------------
def test_api_lists_and_details_with_a_management_key(acme, bluegum, api_client, management_key):
    mine = make_conversation(acme, "api-1", qa=64)
    make_conversation(acme, "api-2", minutes=2)
    theirs = make_conversation(bluegum, "api-x", qa=10)
    api_client.credentials(HTTP_AUTHORIZATION=f"Bearer {management_key(acme, write=False)}")
    listing = api_client.get("/api/v1/conversations")
    assert listing.status_code == 200
    assert [c["conversation_id"] for c in listing.json()["results"]] == ["api-1", "api-2"]
    assert listing.json()["results"][0]["qa_score"] == 64
    filtered = api_client.get("/api/v1/conversations", {"qa_min": 60})
    assert [c["conversation_id"] for c in filtered.json()["results"]] == ["api-1"]
    detail = api_client.get(f"/api/v1/conversations/{mine.pk}")
    assert detail.status_code == 200
    (analysis,) = detail.json()["analyses"]
    assert analysis["rubric"]["resolution"] == {"score": 64, "reason": "resolution was fine"}
    assert api_client.get(f"/api/v1/conversations/{theirs.pk}").status_code == 404
    assert api_client.get("/api/v1/conversations", {"qa_min": 500}).status_code == 400


def test_api_refuses_without_credentials_and_an_inference_only_key(acme, api_client, issue_key):
    assert api_client.get("/api/v1/conversations").status_code == 401
    api_client.credentials(HTTP_AUTHORIZATION=f"Bearer {issue_key(acme, scopes=['inference'])}")
    assert api_client.get("/api/v1/conversations").status_code in (401, 403)


def test_api_schema_documents_the_conversations(client):
    schema = client.get("/api/schema/", HTTP_ACCEPT="application/vnd.oai.openapi+json").content.decode()
    assert "conversations_list" in schema and "conversations_retrieve" in schema


def test_dates_at_the_end_of_the_calendar_are_not_a_500(acme, reviewer_client, api_client, management_key):
    make_conversation(acme, "c-end", qa=70)
    assert reviewer_client.get(list_url(acme, until="9999-12-31")).status_code in (200, 400)
    assert reviewer_client.get(list_url(acme, until="9999-12-31", export="csv")).status_code in (200, 400)
    api_client.credentials(HTTP_AUTHORIZATION=f"Bearer {management_key(acme)}")
    assert api_client.get("/api/v1/conversations", {"until": "9999-12-31"}).status_code in (200, 400)
    assert api_client.get("/api/v1/conversations", {"cursor": "bm9uc2Vuc2U="}).status_code in (200, 400, 404)
    # A cursor is the client's to send back, so it may be forged: a position that is no time is not a 500.
    assert api_client.get("/api/v1/conversations", {"cursor": "cD1ub3QtYS10aW1lJnI9MA=="}).status_code in (400, 404)
    assert api_client.get("/api/v1/conversations", {"limit": "-3"}).status_code == 200


def test_api_cursor_pages_still_walk_every_conversation(acme, api_client, management_key):
    for i in range(3):
        make_conversation(acme, f"c-walk-{i}", minutes=i)
    api_client.credentials(HTTP_AUTHORIZATION=f"Bearer {management_key(acme)}")
    seen, url = [], "/api/v1/conversations?limit=1"
    while url:
        body = api_client.get(url).json()
        seen += [c["conversation_id"] for c in body["results"]]
        url = body["next"]
    assert seen == ["c-walk-0", "c-walk-1", "c-walk-2"]
