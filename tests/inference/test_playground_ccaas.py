"""The playground's customer-conversation mode over its socket: each customer turn is scored (``core.sentiment``),
the tenant's escalation rule decides, the page gets a ``sentiment`` frame before the reply, and every decision is
in the audit chain as ``adm.escalation`` with its inputs' digests and no text. Runs through the real ASGI
application on the configured channel layer (channels-redis when ``REDIS_URL`` is set, as in CI) with the
simulator as the replica."""

from __future__ import annotations

import hashlib

import orjson
import pytest
from asgiref.sync import sync_to_async
from django.test import Client

from core import contract, sentiment
from inference import adm
from inference.playground import PERSONAS
from tests.conftest import sign_in
from tests.inference import test_playground as base
from tests.inference.test_playground import chat, next_frame, ready, reply, session_cookie

# The socket fixtures of the playground's own tests (the process's data plane, an agent and its session).
gateway, agent, agent_cookie = base.gateway, base.agent, base.agent_cookie

pytestmark = pytest.mark.django_db(transaction=True)
MODE = {"channel": "webchat", "language": "en-AU", "customer_id": "cust-00042"}


def customer_frame(turn: str, lines: list[str], *, mode: dict | None = None) -> dict:
    """A chat frame as the page sends it in customer mode: every customer line so far, each answered."""
    messages: list[dict] = [{"role": "system", "content": "You are a helpful agent."}]
    for index, line in enumerate(lines):
        if index:
            messages.append({"role": "assistant", "content": "I understand. Let me look into that for you."})
        messages.append({"role": "user", "content": line})
    frame = chat(turn, max_tokens=2, ccaas=mode or MODE)
    frame["messages"] = messages
    return frame


def _any_decision() -> contract.EscalationDecision:
    digest = "0" * 64
    return contract.EscalationDecision(
        decision_id="c:0", tenant="t", conversation_id="c", key_id="k", time=0.0, turn=0, escalate=True,
        reason="trigger_phrase", text_sha256=digest, rule_sha256=digest, inputs_sha256=digest, scorer="lexicon",
        score=-1.0, label="negative")


async def customer_turn(comm, turn: str, lines: list[str], **kwargs) -> tuple[dict, dict]:
    """Send one customer turn; its sentiment frame (which comes before the reply starts) and the reply's done."""
    await comm.send_to(text_data=orjson.dumps(customer_frame(turn, lines, **kwargs)).decode())
    frames, done = await reply(comm, turn)
    kinds = [f["type"] for f in frames]
    assert kinds[0] == "sentiment" and kinds[1] == "start", kinds
    assert done["type"] == "done" and done["status"] == 200
    return frames[0], done


def escalation_entries(tenant) -> list:
    from audit.models import AuditEntry

    return list(AuditEntry.objects.filter(action="adm.escalation", tenant=tenant).order_by("id"))


async def test_an_angry_customer_is_escalated_on_the_second_negative_turn_and_each_decision_is_audited(
        acme, agent, agent_cookie, gateway):
    angry = list(PERSONAS["angry"][1])
    comm = await ready(acme.slug, agent_cookie)
    first, done1 = await customer_turn(comm, "a1", angry[:1])
    assert first["turn"] == 1 and first["label"] == "negative" and first["score"] <= -0.5
    assert first["escalate"] == {"escalate": False, "reason": ""}
    second, done2 = await customer_turn(comm, "a2", angry[:2])
    assert second["turn"] == 2 and second["label"] == "negative"
    assert second["escalate"]["escalate"] is True and "negative sentiment" in second["escalate"]["reason"]
    third, _done = await customer_turn(comm, "a3", angry[:3])
    assert third["escalate"]["escalate"] is True and "speak to a manager" in third["escalate"]["reason"]
    await comm.disconnect()

    entries = await sync_to_async(escalation_entries)(acme)
    assert len(entries) == 3
    rule = sentiment.EscalationRule()  # Acme has the default rule
    for n, (entry, line, done) in enumerate(zip(entries, angry, (done1, done2, None), strict=False)):
        data = entry.data
        assert entry.actor_id == agent.pk and data["surface"] == "playground"
        assert data["text_sha256"] == hashlib.sha256(line.encode()).hexdigest()
        assert data["rule_sha256"] == rule.digest() and data["scorer"] == "lexicon" and data["fallback"] == ""
        assert data["score"] == sentiment.score(line).score and data["label"] == "negative"
        assert (data["customer_turn"], data["turn"]) == (n + 1, 2 * n)  # the API counts customer and model turns
        assert data["decision_id"] == f"playground:{data['request_id']}"
        if done is not None:
            assert data["request_id"] == done["request_id"]  # the decision names the reply's request
    assert [e.data["escalate"] for e in entries] == [False, True, True]
    assert [e.data["reason"] for e in entries] == ["", "negative_sentiment", "trigger_phrase"]
    # Every input the second decision read: its turn, the rule, the scorer, its score and the turn before it.
    first, second = entries[0].data, entries[1].data
    assert second["inputs_sha256"] == sentiment.decision_inputs_digest(
        text_sha256=second["text_sha256"], rule_sha256=second["rule_sha256"], scorer="lexicon",
        score=second["score"], trail=[(first["text_sha256"], first["score"])])
    # The same shape as the conversation API's entries, written by inference.adm.
    assert set(adm.audit_data(_any_decision())) <= set(second)
    recorded = orjson.dumps([e.data for e in entries]).decode()
    assert not any(line in recorded for line in angry)  # no customer text in the chain
    assert "cust-00042" not in recorded


async def test_a_calm_customer_is_never_escalated(acme, agent_cookie, gateway):
    calm = list(PERSONAS["calm"][1])
    comm = await ready(acme.slug, agent_cookie)
    labels = []
    for n in range(1, len(calm) + 1):
        frame, _done = await customer_turn(comm, f"c{n}", calm[:n])
        assert frame["escalate"]["escalate"] is False
        labels.append(frame["label"])
    assert "negative" not in labels and "positive" in labels
    await comm.disconnect()
    assert [e.data["escalate"] for e in await sync_to_async(escalation_entries)(acme)] == [False] * len(calm)


async def test_the_tenants_own_rule_decides_and_a_change_applies_from_the_next_turn(acme, agent_cookie, gateway):
    angry = list(PERSONAS["angry"][1])
    comm = await ready(acme.slug, agent_cookie)

    def set_rule(**fields) -> None:
        for name, value in fields.items():
            setattr(acme, name, value)
        acme.save(update_fields=list(fields))

    # Sentiment never escalates (0 turns); only the tenant's own phrase does.
    await sync_to_async(set_rule)(escalation_turns=0, escalation_phrases="cancel my account")
    frame, _ = await customer_turn(comm, "r1", angry[:2])
    assert frame["escalate"]["escalate"] is False, frame["escalate"]
    frame, _ = await customer_turn(comm, "r2", [*angry[:2], "Right, cancel my account."])
    assert frame["escalate"]["escalate"] is True and "cancel my account" in frame["escalate"]["reason"]
    # One negative turn is enough now.
    await sync_to_async(set_rule)(escalation_turns=1, escalation_threshold=-0.5)
    frame, _ = await customer_turn(comm, "r3", angry[:1])
    assert frame["escalate"]["escalate"] is True and "1 turn in a row" in frame["escalate"]["reason"]
    await comm.disconnect()
    digests = [e.data["rule_sha256"] for e in await sync_to_async(escalation_entries)(acme)]
    assert digests[0] == digests[1] != digests[2]
    assert digests[2] == sentiment.EscalationRule(threshold=-0.5, turns=1, phrases=("cancel my account",)).digest()


async def test_plain_chat_is_neither_scored_nor_audited(acme, agent_cookie, gateway):
    comm = await ready(acme.slug, agent_cookie)
    await comm.send_to(text_data=orjson.dumps(chat("p1", max_tokens=2, text="This is terrible!")).decode())
    frames, done = await reply(comm, "p1")
    assert done["status"] == 200 and "sentiment" not in [f["type"] for f in frames]
    await comm.disconnect()
    assert await sync_to_async(escalation_entries)(acme) == []


async def test_another_tenants_decisions_stay_in_its_own_trail(acme, bluegum, agent_cookie, gateway, member_of):
    other = await sync_to_async(member_of)(bluegum, "agent", email="helpdesk@bluegum.example")
    comm = await ready(bluegum.slug, await sync_to_async(session_cookie)(other))
    frame, _ = await customer_turn(comm, "b1", list(PERSONAS["angry"][1])[:1])
    assert frame["label"] == "negative"
    await comm.disconnect()
    assert await sync_to_async(escalation_entries)(acme) == []
    assert len(await sync_to_async(escalation_entries)(bluegum)) == 1


async def test_a_malformed_customer_turn_is_refused_before_it_is_scored(acme, agent_cookie, gateway):
    comm = await ready(acme.slug, agent_cookie)
    bad = customer_frame("m1", ["Hello"], mode={"channel": "fax"})
    await comm.send_to(text_data=orjson.dumps(bad).decode())
    refused = await next_frame(comm)
    assert (refused["type"], refused["status"], refused["error"]["param"]) == ("error", 400, "ccaas.channel")
    await comm.disconnect()
    assert await sync_to_async(escalation_entries)(acme) == []


def test_the_page_offers_personas_a_gauge_and_a_banner(acme, agent, client):
    sign_in(client, agent)
    html = client.get(f"/t/{acme.slug}/playground/").content.decode()
    assert '<label for="pg-persona">Customer persona</label>' in html
    for value, (label, _lines) in PERSONAS.items():
        assert f'<option value="{value}">{label}</option>' in html
    assert '<label for="pg-sentiment-meter">Customer sentiment</label>' in html and "<meter" in html
    assert 'id="pg-escalation"' in html and 'role="alert"' in html
    assert '<script id="pg-personas" type="application/json">' in html  # data, not script: the CSP holds
    assert PERSONAS["angry"][1][0].replace("'", "&#x27;") in html or PERSONAS["angry"][1][0] in html


def test_the_billing_role_sees_no_personas(acme, member_of):
    biller = member_of(acme, "billing")
    assert sign_in(Client(), biller).get(f"/t/{acme.slug}/playground/").status_code == 403


async def test_a_playground_socket_stays_off_the_configured_channel_layer(acme, agent_cookie, gateway):
    """The layer is channels-redis when REDIS_URL is set (CI) and in-memory otherwise; either way no playground
    socket listens on it, so nothing sent through the layer (by any process) can reach one."""
    from channels.layers import get_channel_layer
    from django.conf import settings

    layer = get_channel_layer()
    expected = "RedisChannelLayer" if settings.REDIS_URL else "InMemoryChannelLayer"
    assert type(layer).__name__ == expected

    def listening() -> set:
        buffer = getattr(layer, "receive_buffer", None)
        return set(buffer if buffer is not None else layer.channels)

    before = listening()  # other tests in this process may have used the layer directly
    comm = await ready(acme.slug, agent_cookie)
    frame, _done = await customer_turn(comm, "l1", list(PERSONAS["calm"][1])[:1])
    assert listening() - before == set()  # the socket waits on no channel of the layer
    assert frame["type"] == "sentiment"
    await comm.disconnect()


def _embedding_events(tenant_id: str) -> list[dict]:
    """The usage events of embeddings requests in the Redis stream so far."""
    from django.conf import settings

    from core.redis import get_redis

    found = []
    for _id, fields in get_redis().xrange(settings.INFERENCE_USAGE_STREAM):
        for line in fields[b"e"].split(b"\n"):
            event = orjson.loads(line)
            # Only this tenant's: a gateway of an earlier test may still be flushing its own events.
            if event["endpoint"] == "embeddings" and event["tenant"] == tenant_id:
                found.append(event)
    return found


async def _embedding_events_settled(tenant_id: str, count: int) -> list[dict]:
    import asyncio
    import time

    deadline = time.monotonic() + 10
    while True:
        events = await sync_to_async(_embedding_events)(tenant_id)
        if len(events) >= count or time.monotonic() > deadline:
            await asyncio.sleep(0.1)  # one more, were it coming, would be written with these
            return await sync_to_async(_embedding_events)(tenant_id)
        await asyncio.sleep(0.02)


async def test_a_tenant_with_the_embedding_scorer_is_scored_by_its_model_through_the_dispatch(
        acme, agent_cookie, gateway):
    from inference.simulator.config import DEFAULT_EMBEDDING_MODEL

    def use_embeddings() -> None:
        acme.sentiment_scorer, acme.sentiment_model = "embedding", DEFAULT_EMBEDDING_MODEL
        acme.save(update_fields=["sentiment_scorer", "sentiment_model"])

    await sync_to_async(use_embeddings)()
    angry = list(PERSONAS["angry"][1])
    comm = await ready(acme.slug, agent_cookie)
    first, _ = await customer_turn(comm, "e1", angry[:1])
    after_first = await _embedding_events_settled(str(acme.pk), 1)
    assert after_first and {e["key_id"] for e in after_first} == {"playground"}  # billed as the playground
    second, _ = await customer_turn(comm, "e2", angry[:2])
    after_second = await _embedding_events_settled(str(acme.pk), len(after_first) + 1)
    assert len(after_second) == len(after_first) + 1  # only the new turn is embedded; the first one's score is kept
    await comm.disconnect()
    entries = await sync_to_async(escalation_entries)(acme)
    assert [(e.data["scorer"], e.data["fallback"]) for e in entries] == [("embedding", "")] * 2
    assert -1 <= first["score"] <= 1 and second["turn"] == 2


async def test_an_embedding_scorer_that_fails_falls_back_to_the_lexicon_and_says_why(acme, agent_cookie, gateway):
    def use_a_missing_model() -> None:
        acme.sentiment_scorer, acme.sentiment_model = "embedding", "no-such/embedding-model"
        acme.save(update_fields=["sentiment_scorer", "sentiment_model"])

    await sync_to_async(use_a_missing_model)()
    comm = await ready(acme.slug, agent_cookie)
    line = PERSONAS["angry"][1][0]
    frame, done = await customer_turn(comm, "f1", [line])
    assert frame["score"] == round(sentiment.score(line).score, 3) and done["status"] == 200  # the reply still comes
    await comm.disconnect()
    [entry] = await sync_to_async(escalation_entries)(acme)
    assert entry.data["scorer"] == "lexicon" and entry.data["fallback"].startswith("embedding_failed: 4")
