"""The playground's History (docs/playground.md "History"): with transcript retention on, a member's playground
chat is kept under its session's conversation id and the member's user id, and comes back in their own history
only; re-opening decrypts it (audited, no content in the entry); another member's or another tenant's
conversation is a 404; with retention off nothing is kept and there is no history."""

from __future__ import annotations

import asyncio
import base64
import os
import time

import orjson
import pytest
from asgiref.sync import sync_to_async
from django.test import Client

from audit import envelope
from audit.models import AuditEntry, Transcript
from audit.transcripts import transcripts_ingest
from core import contract
from core.keys import PLAYGROUND_KEY_ID
from core.redis import get_redis
from tenants.models import Role
from tenants.services import tenant_retention_set
from tests.conftest import add_totp, sign_in
from tests.inference import test_playground as pg

# The playground tests' fixtures: the process's data plane, and a signed-in agent of Acme.
gateway, agent, agent_cookie = pg.gateway, pg.agent, pg.agent_cookie
WAIT_S, chat, next_frame, ready, reply = pg.WAIT_S, pg.chat, pg.next_frame, pg.ready, pg.reply

pytestmark = pytest.mark.django_db(transaction=True)
SECRET = "my account number is 7731-0092"
CONVERSATION = "pg-0123456789abcdef0123456789abcdef"


@pytest.fixture(autouse=True)
def _local_kek(settings):
    settings.AUDIT_TRANSCRIPT_KMS_KEY_ID = ""
    settings.AUDIT_TRANSCRIPT_LOCAL_KEK = base64.b64encode(os.urandom(32)).decode()
    envelope.forget()
    yield
    envelope.forget()


@pytest.fixture
def retained(acme, django_capture_on_commit_callbacks):
    with django_capture_on_commit_callbacks(execute=True):
        tenant_retention_set(tenant=acme, days=30)
    acme.refresh_from_db()
    return acme


def keep(tenant, member, *, conversation: str = CONVERSATION, request_id: str, prompt: list, reply_text: str,
         created: float | None = None, key_id: str = PLAYGROUND_KEY_ID, model: str = "m") -> None:
    """One playground record on the transcripts stream, as the data plane writes it, then the worker's ingest."""
    item = contract.TranscriptRecord(
        tenant=str(tenant.pk), request_id=request_id, created=created or time.time(), retention_days=30,
        prompt=prompt, reply=reply_text, key_id=key_id, model=model, endpoint="chat.completions",
        conversation_id=conversation, member=str(member.pk) if member is not None else "")
    get_redis().xadd(contract.transcript_stream_key(), {"t": item.encode()})
    transcripts_ingest()


@pytest.fixture
def agent_client(agent) -> Client:
    return sign_in(Client(), agent)


@pytest.fixture
def two_turns(retained, agent):
    """The agent's two-turn playground conversation, kept."""
    first = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": SECRET}]
    keep(retained, agent, request_id="req_1", prompt=first, reply_text="Noted.", created=time.time() - 60)
    second = [*first, {"role": "assistant", "content": "Noted."}, {"role": "user", "content": "And my balance?"}]
    keep(retained, agent, request_id="req_2", prompt=second, reply_text="A$12.50.", model="m2")


def _url(tenant, conversation: str | None = None) -> str:
    base = f"/t/{tenant.slug}/playground/history/"
    return base if conversation is None else f"{base}{conversation}/"


# --- the record --------------------------------------------------------------------------------------------
def test_a_record_without_a_member_still_decodes_and_a_malformed_member_is_refused():
    old = orjson.dumps({"tenant": "t", "request_id": "r", "created": 1.0, "retention_days": 3, "prompt": [],
                        "reply": "", "v": 1})
    assert contract.TranscriptRecord.decode(old).member == ""
    for member in ("x" * 65, 7):
        bad = orjson.loads(old) | {"member": member}
        with pytest.raises(contract.RecordError):
            contract.TranscriptRecord.decode(orjson.dumps(bad))


# --- through the socket -------------------------------------------------------------------------------------
async def _stored(expected: int) -> list[Transcript]:
    def read():
        transcripts_ingest()
        return list(Transcript.objects.order_by("created_at"))

    deadline = time.monotonic() + WAIT_S
    while time.monotonic() < deadline:
        rows = await sync_to_async(read)()
        if len(rows) >= expected:
            return rows
        await asyncio.sleep(0.05)
    pytest.fail(f"{expected} transcript(s) not stored")


async def test_a_members_playground_chat_is_kept_as_theirs_and_reopens_in_their_history(
        retained, agent, agent_cookie, gateway):
    comm = await ready(retained.slug, agent_cookie)
    await comm.send_to(text_data=orjson.dumps(chat(text=f"/echo {SECRET}", max_tokens=40,
                                                   conversation=CONVERSATION)).decode())
    frames, done = await reply(comm)
    assert done["type"] == "done"
    said = "".join(f["content"] for f in frames if f["type"] == "delta")
    [row] = await _stored(1)
    assert (row.member, row.conversation_id, row.key_id) == (str(agent.pk), CONVERSATION, PLAYGROUND_KEY_ID)
    assert row.request_id == done["request_id"]

    def browse():
        client = sign_in(Client(), agent)
        listed = client.get(_url(retained)).json()["conversations"]
        opened = client.get(_url(retained, CONVERSATION)).json()
        return listed, opened

    listed, opened = await sync_to_async(browse)()
    assert [(c["id"], c["turns"], c["model"]) for c in listed] == [(CONVERSATION, 1, done["model"])]
    assert listed[0]["preview"] == f"/echo {SECRET}"
    assert said and opened["messages"] == [{"role": "system", "content": "Be brief."},
                                           {"role": "user", "content": f"/echo {SECRET}"},
                                           {"role": "assistant", "content": said}]


async def test_a_malformed_conversation_id_in_a_frame_is_refused(retained, agent_cookie, gateway):
    comm = await ready(retained.slug, agent_cookie)
    await comm.send_to(text_data=orjson.dumps(chat(conversation="no spaces/allowed")).decode())
    frame = await next_frame(comm)
    assert frame["type"] == "error" and frame["code"] == "invalid_id" and frame["error"]["param"] == "conversation"


async def test_with_retention_off_a_playground_chat_is_not_kept(acme, agent_cookie, gateway):
    written = gateway.transcripts.written
    comm = await ready(acme.slug, agent_cookie)
    await comm.send_to(text_data=orjson.dumps(chat(conversation=CONVERSATION)).decode())
    _frames, done = await reply(comm)
    assert done["type"] == "done"
    assert gateway.transcripts.pending == 0 and gateway.transcripts.written == written
    assert await sync_to_async(get_redis().xlen)(contract.transcript_stream_key()) == 0


# --- the history views ---------------------------------------------------------------------------------------
def test_the_history_lists_the_members_conversations_newest_first(retained, agent, agent_client, two_turns):
    keep(retained, agent, conversation="pg-older", request_id="req_0", created=time.time() - 3600,
         prompt=[{"role": "user", "content": "An older chat about something else entirely " * 4}], reply_text="ok")
    response = agent_client.get(_url(retained))
    assert response.status_code == 200 and response["content-type"] == "application/json"
    listed = response.json()["conversations"]
    assert [(c["id"], c["turns"], c["model"]) for c in listed] == [(CONVERSATION, 2, "m2"), ("pg-older", 1, "m")]
    assert listed[0]["preview"] == SECRET  # the first message, not the system prompt
    assert listed[1]["preview"].endswith("…") and len(listed[1]["preview"]) <= 81


def test_reopening_returns_the_whole_conversation_and_is_audited_without_content(retained, agent, agent_client,
                                                                                 two_turns):
    response = agent_client.get(_url(retained, CONVERSATION))
    assert response.status_code == 200
    body = response.json()
    assert body["id"] == CONVERSATION and body["model"] == "m2" and body["turns"] == 2
    assert body["messages"] == [
        {"role": "system", "content": "Be brief."}, {"role": "user", "content": SECRET},
        {"role": "assistant", "content": "Noted."}, {"role": "user", "content": "And my balance?"},
        {"role": "assistant", "content": "A$12.50."}]
    [entry] = AuditEntry.objects.filter(action="transcript.read", tenant=retained, target_id__isnull=False)
    latest = Transcript.objects.get(request_id="req_2")
    assert entry.actor_id == agent.pk and entry.target_id == str(latest.pk)
    agent_client.get(_url(retained))
    entries = AuditEntry.objects.filter(action="transcript.read", tenant=retained)
    assert entries.count() == 2
    for entry in entries:
        dumped = orjson.dumps(entry.data).decode()
        assert SECRET not in dumped and "balance" not in dumped and "A$12.50" not in dumped


def test_another_members_conversation_is_not_found_and_not_listed(retained, member_of, two_turns):
    other = sign_in(Client(), member_of(retained, Role.AGENT, email="other@acme.example"))
    assert other.get(_url(retained, CONVERSATION)).status_code == 404
    assert other.get(_url(retained)).json() == {"conversations": []}
    assert not AuditEntry.objects.filter(action="transcript.read").exists()


def test_an_owner_sees_only_their_own_playground_history_and_api_transcripts_are_not_history(
        retained, alice, owner_client, two_turns):
    keep(retained, None, conversation="api-conv", request_id="req_api", key_id="key_abc",
         prompt=[{"role": "user", "content": "api"}], reply_text="x")
    assert owner_client.get(_url(retained)).json() == {"conversations": []}
    assert owner_client.get(_url(retained, CONVERSATION)).status_code == 404
    assert owner_client.get(_url(retained, "api-conv")).status_code == 404
    # ... and still reads everything through the transcripts pages.
    row = Transcript.objects.get(request_id="req_1")
    assert owner_client.get(f"/t/{retained.slug}/transcripts/{row.pk}/").status_code == 200


def test_another_tenants_member_gets_not_found(retained, bluegum, bob, two_turns, django_capture_on_commit_callbacks):
    with django_capture_on_commit_callbacks(execute=True):
        tenant_retention_set(tenant=bluegum, days=30)
    add_totp(bob)  # Bluegum's owner: the second factor the console asks of owners
    client = sign_in(Client(), bob)
    assert client.get(_url(retained)).status_code == 404
    assert client.get(_url(retained, CONVERSATION)).status_code == 404
    assert client.get(_url(bluegum, CONVERSATION)).status_code == 404  # the id under their own tenant


def test_an_unknown_or_malformed_id_is_not_found(retained, agent_client, two_turns):
    assert agent_client.get(_url(retained, "pg-nothing-here")).status_code == 404
    assert agent_client.get(_url(retained, "x" * 65)).status_code == 404
    assert agent_client.get(_url(retained, "bad.id")).status_code == 404


def test_strangers_are_sent_to_sign_in_and_the_billing_role_is_forbidden(retained, member_of, two_turns):
    anonymous = Client()
    for url in (_url(retained), _url(retained, CONVERSATION)):
        response = anonymous.get(url)
        assert response.status_code == 302 and "/accounts/login/" in response["location"]
    billing = sign_in(Client(), member_of(retained, Role.BILLING, email="billing@acme.example"))
    assert billing.get(_url(retained)).status_code == 403
    assert billing.get(_url(retained, CONVERSATION)).status_code == 403


def test_history_only_answers_get(retained, agent_client):
    assert agent_client.post(_url(retained)).status_code in (403, 405)  # CSRF or method: never a change


def test_with_retention_off_there_is_no_history_and_the_page_says_how_to_get_one(acme, agent, agent_client,
                                                                                 owner_client):
    assert agent_client.get(_url(acme)).status_code == 404
    assert agent_client.get(_url(acme, CONVERSATION)).status_code == 404
    page = agent_client.get(f"/t/{acme.slug}/playground/").content.decode()
    assert "History is kept when your organisation turns on transcript retention" in page
    assert f"/t/{acme.slug}/settings/#retention" not in page  # an agent can't change settings
    assert 'id="pg-history-list"' not in page and "data-url" not in page
    owner_page = owner_client.get(f"/t/{acme.slug}/playground/").content.decode()
    assert f"/t/{acme.slug}/settings/#retention" in owner_page


def test_with_retention_on_the_page_has_the_history_panel(retained, agent_client):
    page = agent_client.get(f"/t/{retained.slug}/playground/").content.decode()
    assert 'id="pg-history-list"' in page and f'data-url="{_url(retained)}"' in page
    assert "keeps transcripts for 30 days" in page


def test_expired_conversations_are_not_history(retained, agent, agent_client):
    keep(retained, agent, request_id="req_old", prompt=[{"role": "user", "content": "old"}], reply_text="x")
    Transcript.objects.update(expires_at=Transcript.objects.get().created_at)
    assert agent_client.get(_url(retained)).json() == {"conversations": []}
    assert agent_client.get(_url(retained, CONVERSATION)).status_code == 404



def test_with_the_key_service_unavailable_history_answers_without_a_server_error(monkeypatch, settings, acme,
                                                                                agent, agent_client,
                                                                                django_capture_on_commit_callbacks):
    """KMS unreachable (an outage, throttling, a network fault) is not "gone for good" (410) and not a 500: the
    list still answers (without previews), opening says to try again (503), and nothing is audited as read."""
    import boto3
    from moto import mock_aws

    for name, value in {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing",
                        "AWS_DEFAULT_REGION": "ap-southeast-2"}.items():
        monkeypatch.setenv(name, value)
    settings.AWS_REGION = "ap-southeast-2"
    settings.AWS_ENDPOINT_URL = None
    with mock_aws():  # kept while KMS (moto's, in Sydney) answers
        settings.AUDIT_TRANSCRIPT_KMS_KEY_ID = boto3.client("kms").create_key()["KeyMetadata"]["Arn"]
        with django_capture_on_commit_callbacks(execute=True):
            tenant_retention_set(tenant=acme, days=30)
        keep(acme, agent, request_id="req_k1", prompt=[{"role": "user", "content": SECRET}], reply_text="ok")
    assert Transcript.objects.get(request_id="req_k1").data_key.provider == "kms"
    settings.AWS_ENDPOINT_URL = "http://127.0.0.1:9"  # then KMS can't be reached (nothing listens there)
    envelope.forget()  # no plaintext key cached: the next read asks KMS
    listed = agent_client.get(_url(acme))
    assert listed.status_code == 200
    assert [(c["id"], c["preview"]) for c in listed.json()["conversations"]] == [(CONVERSATION, "")]
    opened = agent_client.get(_url(acme, CONVERSATION))
    assert opened.status_code == 503 and opened["content-type"] == "application/json"
    assert "try again" in opened.json()["error"].lower()
    assert not AuditEntry.objects.filter(action="transcript.read").exists()


def test_a_removed_member_reads_no_history_and_a_returning_one_finds_only_their_own(retained, agent, agent_client,
                                                                                   two_turns):
    """Removed: the history is the organisation's, not theirs to take away (404, as for any non-member). Invited
    back (as agent or above), the conversations they themselves sent are theirs to see again; owners could read
    them all along through the transcripts pages."""
    from tenants.models import Membership
    from tenants.services import member_remove

    member_remove(membership=Membership.objects.get(tenant=retained, user=agent), actor_role=Role.OWNER)
    assert agent_client.get(_url(retained)).status_code == 404
    assert agent_client.get(_url(retained, CONVERSATION)).status_code == 404
    assert not AuditEntry.objects.filter(action="transcript.read").exists()
    Membership.objects.create(tenant=retained, user=agent, role=Role.DEVELOPER)
    assert [c["id"] for c in agent_client.get(_url(retained)).json()["conversations"]] == [CONVERSATION]


def test_history_answers_are_not_kept_in_the_browsers_cache(retained, agent_client, two_turns):
    """Decrypted conversation text (and its opening words in the list) is personal: no-store, as the key-created
    page, so it isn't left in a shared computer's disk cache."""
    for url in (_url(retained), _url(retained, CONVERSATION)):
        response = agent_client.get(url)
        assert response.status_code == 200 and "no-store" in response["Cache-Control"]


def test_the_preview_is_the_conversations_opening_words_even_when_its_first_kept_turn_is_a_later_one(
        retained, agent, agent_client):
    """Retention turned on mid-conversation: the first kept turn's prompt already holds earlier messages, and the
    list should still show how the conversation began."""
    prompt = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "How it began"},
              {"role": "assistant", "content": "ok"}, {"role": "user", "content": "A later question"}]
    keep(retained, agent, request_id="req_mid", prompt=prompt, reply_text="fine")
    [listed] = agent_client.get(_url(retained)).json()["conversations"]
    assert listed["preview"] == "How it began"
