"""R-RET capture on the data plane: a tenant without retention gets nothing on the transcripts stream; with it,
each /v1 chat or completions request's prompt (as sent upstream: redacted when redaction is on) and the reply the
replica generated (a stream's pieces joined, before restore) go on the stream as one ``TranscriptRecord``."""

from __future__ import annotations

import httpx
import orjson
import pytest

from core import contract
from core.redis import get_redis
from tenants import signals
from tenants.models import Tenant
from tests.conftest import wait_for

MODEL = "mistralai/Mistral-7B-Instruct-v0.3"

pytestmark = pytest.mark.django_db(transaction=True)


@pytest.fixture
def keep(django_capture_on_commit_callbacks):
    def keep_(tenant, days: int, *, redaction: str = "off") -> None:
        Tenant.objects.filter(pk=tenant.pk).update(retention_days=days, redaction=redaction)
        tenant.refresh_from_db()
        signals.tenant_changed.send(sender=Tenant, tenant=tenant)  # republish the record, as the service does

    return keep_


def _records() -> list[contract.TranscriptRecord]:
    entries = get_redis().xrange(contract.transcript_stream_key())
    return [contract.TranscriptRecord.decode(fields[b"t"]) for _id, fields in entries]


def _chat(server, key: str, content: str, *, stream: bool = False, headers: dict | None = None):
    body = {"model": MODEL, "messages": [{"role": "user", "content": content}], "max_tokens": 200,
            "stream": stream}
    auth = {"Authorization": f"Bearer {key}", **(headers or {})}
    response = httpx.post(f"{server.base_url}/v1/chat/completions", headers=auth, json=body, timeout=30)
    assert response.status_code == 200, response.text
    return response


def test_nothing_is_captured_when_retention_is_off(gateway_ready, acme, issue_key, access_lines):
    key = issue_key(acme)
    _chat(gateway_ready, key, "/echo my account is 1234")
    _chat(gateway_ready, key, "/echo streamed", stream=True)
    wait_for(lambda: len(access_lines) >= 2)  # both settled
    assert _records() == []


def test_a_chat_request_is_captured_with_its_prompt_and_reply(gateway_ready, acme, issue_key, keep, access_lines):
    keep(acme, 30)
    key = issue_key(acme)
    response = _chat(gateway_ready, key, "/echo hello there", headers={"x-wattle-customer-id": "cust-42"})
    records = wait_for(_records)
    assert len(records) == 1
    record = records[0]
    assert record.tenant == str(acme.pk) and record.retention_days == 30 and record.kind == "request"
    assert record.request_id == response.headers["x-request-id"]
    assert record.prompt == [{"role": "user", "content": "/echo hello there"}]
    assert record.reply == response.json()["choices"][0]["message"]["content"] == "/echo hello there"
    assert record.customer_id == "cust-42" and record.model == MODEL and record.endpoint == "chat.completions"
    assert record.key_id and record.status == 200
    # The access log never carries the text.
    wait_for(lambda: access_lines)
    assert "hello there" not in orjson.dumps(access_lines).decode()


def test_a_streamed_reply_is_captured_whole(gateway_ready, acme, issue_key, keep):
    keep(acme, 7)
    key = issue_key(acme)
    _chat(gateway_ready, key, "/echo one two three four five", stream=True)
    record = wait_for(_records)[0]
    assert record.reply == "/echo one two three four five"


def test_a_redacted_request_is_kept_with_its_placeholders_not_the_originals(gateway_ready, acme, issue_key, keep):
    keep(acme, 7, redaction="restore")
    key = issue_key(acme)
    response = _chat(gateway_ready, key, "/echo email jo@example.com.au please")
    assert "jo@example.com.au" in response.json()["choices"][0]["message"]["content"]  # restored for the tenant
    record = wait_for(_records)[0]
    assert "jo@example.com.au" not in orjson.dumps(record.prompt).decode() + record.reply
    assert "[AU_EMAIL_1]" in record.prompt[0]["content"] and "[AU_EMAIL_1]" in record.reply


def test_embeddings_are_not_transcripts(gateway_ready, acme, issue_key, keep, access_lines):
    keep(acme, 7)
    key = issue_key(acme)
    response = httpx.post(f"{gateway_ready.base_url}/v1/embeddings", headers={"Authorization": f"Bearer {key}"},
                          json={"model": MODEL, "input": "hello"}, timeout=30)
    wait_for(lambda: access_lines)
    assert response.status_code in (200, 400, 404) and _records() == []


@pytest.fixture
def access_lines(monkeypatch) -> list[dict]:
    from inference.gateway.app import gateway

    lines: list[dict] = []
    monkeypatch.setattr(gateway.access_log, "write", lambda line: lines.append(orjson.loads(line)))
    return lines


def test_reply_text_joins_stream_pieces_per_choice_and_survives_a_malformed_event():
    from inference.gateway.transcripts import reply_text

    def event(index, text):
        return b'data: {"choices":[{"index":%d,"delta":{"content":"%s"}}]}\n\n' % (index, text.encode())

    parts = [event(0, "Hel") + event(1, "Wor"), event(0, "lo") + b"data: {not json\n\n" + event(1, "ld")]
    assert reply_text("chat.completions", parts) == "Hello\n\nWorld"
    answer = b'{"choices":[{"index":0,"text":"done"}]}'
    assert reply_text("completions", [answer]) == "done"
    assert reply_text("chat.completions", []) == ""


def test_emit_transcript_queues_nothing_without_retention_or_an_emitter(monkeypatch):
    from inference.gateway import transcripts

    sent = []

    class Emitter:
        def emit(self, record):
            sent.append(record)

    monkeypatch.setattr(transcripts, "_emitter", None)
    assert not transcripts.emit_transcript(tenant="t", retention_days=30, request_id="r", prompt=[], reply="")
    monkeypatch.setattr(transcripts, "_emitter", Emitter())
    assert not transcripts.emit_transcript(tenant="t", retention_days=0, request_id="r", prompt=[], reply="")
    assert transcripts.emit_transcript(tenant="t", retention_days=9, request_id="r", prompt=[], reply="hi",
                                       kind="conversation_turn", conversation_id="c1", turn=3)
    assert [(r.kind, r.conversation_id, r.turn, r.retention_days) for r in sent] == [("conversation_turn", "c1", 3, 9)]
    assert contract.TranscriptRecord.decode(sent[0].encode()) == sent[0]


def test_a_caller_that_keeps_its_own_content_is_not_captured_twice():
    from inference.gateway.auth import KeyRecord
    from inference.gateway.exchange import RequestContext
    from inference.gateway.transcripts import wants_capture

    ctx = RequestContext("chat.completions", "req_x")
    ctx.key = KeyRecord(key_id="k", tenant="t-1", tenant_status="active", hash="", scopes=frozenset(),
                        models=frozenset(), expires=None, revoked=False, retention_days=7)
    assert wants_capture(ctx)
    ctx.retain = False  # the conversation API emits its turns itself
    assert not wants_capture(ctx)
    ctx.retain, ctx.endpoint = True, "embeddings"
    assert not wants_capture(ctx)
