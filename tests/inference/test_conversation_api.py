"""The conversation API through the real gateway and the vLLM simulator (docs/conversations.md): turns with the
history sent to the model each time, sentiment and escalation, state in Redis, close onto the control plane's
stream; tenant isolation, scope, authentication, limits, malformed input; streaming; billing per turn; the
openai-style httpx client and curl."""

from __future__ import annotations

import asyncio
import subprocess
import textwrap

import httpx
import orjson
import pytest

from core import contract
from core.redis import get_redis
from tests.conftest import ingested, wait_for

MODEL = "mistralai/Mistral-7B-Instruct-v0.3"

pytestmark = pytest.mark.django_db(transaction=True)


def _headers(key: str, **extra) -> dict:
    return {"Authorization": f"Bearer {key}", **extra}


def turn(server, key: str, message: str, **fields) -> httpx.Response:
    headers = fields.pop("headers", {})
    body = {"message": message, **fields}
    if "conversation_id" not in body:
        body.setdefault("model", MODEL)
    return httpx.post(f"{server.base_url}/v1/conversation", headers=_headers(key, **headers), json=body, timeout=30)


@pytest.fixture
def upstream_bodies(monkeypatch) -> list[dict]:
    """What the gateway sent the replica (a spy at the network edge: the request still goes)."""
    from inference.gateway.app import gateway

    seen: list[dict] = []
    original = gateway.upstream.begin

    def spy(url, path, body, **kwargs):
        if path == "/v1/chat/completions":
            seen.append(orjson.loads(body))
        return original(url, path, body, **kwargs)

    monkeypatch.setattr(gateway.upstream, "begin", spy)
    return seen


def test_a_conversation_sends_its_history_each_turn_and_closes_onto_the_stream(
        gateway_ready, acme, issue_key, upstream_bodies):
    key = issue_key(acme)
    first = turn(gateway_ready, key, "/echo G'day, my internet is down", channel="whatsapp", customer_id="cust-42",
                 metadata={"queue": "faults"})
    assert first.status_code == 200, first.text
    one = first.json()
    assert one["object"] == "conversation.turn" and one["conversation_id"].startswith("conv_")
    assert one["reply"] == "/echo G'day, my internet is down"
    assert set(one["sentiment"]) == {"score", "label"} and -1 <= one["sentiment"]["score"] <= 1
    assert one["escalate"] == {"flag": False, "reason": ""}
    assert one["usage"]["prompt_tokens"] > 0 and one["usage"]["completion_tokens"] > 0
    assert first.headers["x-wattle-conversation-id"] == one["conversation_id"]
    cid = one["conversation_id"]

    second = turn(gateway_ready, key, "/echo Thanks, that's sorted it", conversation_id=cid)
    assert second.status_code == 200, second.text
    assert second.json()["sentiment"]["label"] == "positive"
    assert second.json()["usage"]["prompt_tokens"] > one["usage"]["prompt_tokens"]

    # The model got the channel's instruction, then the earlier turns, then this message; never the customer id.
    sent = upstream_bodies[-1]["messages"]
    assert [m["role"] for m in sent] == ["system", "user", "assistant", "user"]
    assert "WhatsApp" in sent[0]["content"] and "en-AU" in sent[0]["content"]
    assert sent[1]["content"] == "/echo G'day, my internet is down" == sent[2]["content"]
    assert sent[3]["content"] == "/echo Thanks, that's sorted it"
    assert b"cust-42" not in orjson.dumps(upstream_bodies)

    shown = httpx.get(f"{gateway_ready.base_url}/v1/conversations/{cid}", headers=_headers(key)).json()
    assert shown["status"] == "open" and shown["channel"] == "whatsapp" and shown["language"] == "en-AU"
    assert shown["customer_id"] == "cust-42" and shown["metadata"] == {"queue": "faults"}
    assert [t["role"] for t in shown["turns"]] == ["user", "assistant", "user", "assistant"]
    assert len(shown["sentiment_trail"]) == 2 and shown["escalation"]["flag"] is False

    closed = httpx.post(f"{gateway_ready.base_url}/v1/conversations/{cid}/close", headers=_headers(key))
    assert closed.status_code == 200 and closed.json()["status"] == "closed"
    assert all(t["text"] is None for t in closed.json()["turns"])  # no text left in the data plane
    entries = get_redis().xrange(contract.conversations_closed_stream_key())
    records = [contract.ClosedConversation.decode(fields[b"e"]) for _, fields in entries]
    assert [r.conversation_id for r in records] == [cid]
    record = records[0]
    assert record.tenant == str(acme.pk) and record.channel == "whatsapp" and record.customer_id == "cust-42"
    assert [t.role for t in record.turns] == ["user", "assistant", "user", "assistant"]
    assert record.turns[2].label == "positive" and record.metadata == {"queue": "faults"}

    again = httpx.post(f"{gateway_ready.base_url}/v1/conversations/{cid}/close", headers=_headers(key))
    assert again.status_code == 409 and again.json()["error"]["code"] == "conversation_closed"
    late = turn(gateway_ready, key, "hello?", conversation_id=cid)
    assert late.status_code == 409 and late.json()["error"]["code"] == "conversation_closed"
    assert httpx.get(f"{gateway_ready.base_url}/v1/conversations/{cid}",
                     headers=_headers(key)).json()["status"] == "closed"
