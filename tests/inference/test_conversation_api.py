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


def test_a_trigger_phrase_escalates_and_the_decision_is_audited_once_with_digests_and_no_text(
        gateway_ready, acme, issue_key):
    from audit.models import AuditEntry
    from core import sentiment
    from inference.adm import adm_decisions_ingest

    key = issue_key(acme)
    text = "/echo Can I speak to a human please"
    first = turn(gateway_ready, key, text)
    assert first.json()["escalate"] == {"flag": True, "reason": "trigger_phrase"}
    cid = first.json()["conversation_id"]
    # Still escalated on the next turn, but that is not a second decision.
    assert turn(gateway_ready, key, "/echo hello? speak to a human", conversation_id=cid).json()["escalate"][
        "flag"] is True
    adm_decisions_ingest()
    adm_decisions_ingest()  # idempotent: nothing more
    entries = list(AuditEntry.objects.filter(action="adm.escalation"))
    assert len(entries) == 1
    entry = entries[0]
    assert entry.tenant_id == acme.pk and entry.data["conversation_id"] == cid
    assert entry.data["reason"] == "trigger_phrase" and entry.data["escalate"] is True
    assert entry.data["text_sha256"] == sentiment.text_digest(text)
    assert entry.data["rule_sha256"] == sentiment.EscalationRule().digest()
    assert len(entry.data["inputs_sha256"]) == 64 and entry.data["scorer"] == "lexicon"
    assert "human" not in orjson.dumps(entry.data).decode().lower()  # digests, never the text
    assert entry.api_key_id and entry.actor_kind == AuditEntry.ActorKind.API_KEY


def test_consecutive_negative_turns_escalate_on_the_tenants_rule(gateway_ready, acme, issue_key):
    key = issue_key(acme)
    angry = "/echo I'm absolutely furious, this is unacceptable"
    first = turn(gateway_ready, key, angry)
    assert first.json()["sentiment"]["label"] == "negative"
    assert first.json()["escalate"]["flag"] is False  # the default rule: two negative turns in a row
    cid = first.json()["conversation_id"]
    calm = turn(gateway_ready, key, "/echo ok", conversation_id=cid).json()
    assert calm["escalate"]["flag"] is False
    assert turn(gateway_ready, key, angry, conversation_id=cid).json()["escalate"]["flag"] is False
    second = turn(gateway_ready, key, "/echo You've ripped me off, I'm not happy", conversation_id=cid).json()
    assert second["escalate"] == {"flag": True, "reason": "negative_sentiment"}
    shown = httpx.get(f"{gateway_ready.base_url}/v1/conversations/{cid}", headers=_headers(key)).json()
    assert shown["escalation"]["turn"] == 6 and shown["escalation"]["reason"] == "negative_sentiment"
    assert [s < -0.5 for s in shown["sentiment_trail"]] == [True, False, True, True]


def test_streaming_relays_chunks_then_the_turn_then_done(gateway_ready, acme, issue_key):
    key = issue_key(acme)
    events = []
    with httpx.stream("POST", f"{gateway_ready.base_url}/v1/conversation", headers=_headers(key), timeout=30,
                      json={"message": "/echo Cheers mate, all good", "model": MODEL, "stream": True}) as response:
        assert response.status_code == 200
        assert response.headers["content-type"].startswith("text/event-stream")
        cid = response.headers["x-wattle-conversation-id"]
        for line in response.iter_lines():
            if line.startswith("data: "):
                events.append(line[6:])
    assert events[-1] == "[DONE]"
    final = orjson.loads(events[-2])
    assert final["object"] == "conversation.turn" and final["conversation_id"] == cid
    assert final["reply"] == "/echo Cheers mate, all good"
    assert final["sentiment"]["label"] == "positive" and final["escalate"]["flag"] is False
    chunks = [orjson.loads(e) for e in events[:-2]]
    assert len(chunks) > 1 and all(c["object"] == "chat.completion.chunk" for c in chunks)
    assert "".join(c["choices"][0]["delta"].get("content") or "" for c in chunks if c["choices"]) == final["reply"]
    shown = httpx.get(f"{gateway_ready.base_url}/v1/conversations/{cid}", headers=_headers(key)).json()
    assert [t["text"] for t in shown["turns"]] == ["/echo Cheers mate, all good"] * 2


def test_another_tenant_gets_404_for_every_route_and_nothing_changes(gateway_ready, acme, bluegum, issue_key):
    mine, theirs = issue_key(acme), issue_key(bluegum)
    cid = turn(gateway_ready, mine, "/echo hi").json()["conversation_id"]
    base = gateway_ready.base_url
    answers = [
        httpx.get(f"{base}/v1/conversations/{cid}", headers=_headers(theirs)),
        httpx.post(f"{base}/v1/conversations/{cid}/close", headers=_headers(theirs)),
        turn(gateway_ready, theirs, "/echo let me in", conversation_id=cid),
        httpx.get(f"{base}/v1/conversations/conv_doesnotexistatall00", headers=_headers(mine)),
    ]
    for answer in answers:
        assert answer.status_code == 404
        assert answer.json()["error"]["code"] == "conversation_not_found"
        assert set(answer.json()["error"]) == {"message", "type", "param", "code"}
    shown = httpx.get(f"{base}/v1/conversations/{cid}", headers=_headers(mine)).json()
    assert shown["status"] == "open" and len(shown["turns"]) == 2


def test_authentication_and_scope(gateway_ready, acme, issue_key):
    base = gateway_ready.base_url
    no_key = httpx.post(f"{base}/v1/conversation", json={"message": "hi", "model": MODEL})
    assert no_key.status_code == 401 and no_key.json()["error"]["type"] == "invalid_request_error"
    wrong = httpx.get(f"{base}/v1/conversations/conv_abcdefghijklmnopqrstuvwx", headers=_headers("wtl_nope_nope"))
    assert wrong.status_code == 401
    management_only = issue_key(acme, scopes=["management:read"])
    for answer in (turn(gateway_ready, management_only, "hi"),
                   httpx.get(f"{base}/v1/conversations/conv_abcdefghijklmnopqrstuvwx",
                             headers=_headers(management_only))):
        assert answer.status_code == 403 and answer.json()["error"]["code"] == "insufficient_scope"


def test_the_keys_model_allow_list_applies(gateway_ready, acme, issue_key):
    key = issue_key(acme, allowed_models=["some/other-model"])
    answer = turn(gateway_ready, key, "hi")
    assert answer.status_code == 403 and answer.json()["error"]["code"] == "model_not_allowed"


def test_a_key_not_allowed_the_conversations_model_cannot_continue_it(gateway_ready, acme, issue_key):
    """Another key of the same organisation may continue a conversation only on a model it may use: the turn is
    checked against the conversation's model, whichever key started it, and nothing is kept."""
    opener, narrow = issue_key(acme), issue_key(acme, allowed_models=["some/other-model"])
    cid = turn(gateway_ready, opener, "/echo hi").json()["conversation_id"]
    refused = turn(gateway_ready, narrow, "/echo and again", conversation_id=cid)
    assert refused.status_code == 403 and refused.json()["error"]["code"] == "model_not_allowed"
    shown = httpx.get(f"{gateway_ready.base_url}/v1/conversations/{cid}", headers=_headers(opener)).json()
    assert len(shown["turns"]) == 2 and shown["model"] == MODEL


def test_a_revoked_key_can_neither_continue_read_nor_close_its_conversation(gateway_ready, acme, issue_key,
                                                                             django_capture_on_commit_callbacks):
    from tenants.models import ApiKey
    from tenants.services import api_key_revoke

    key = issue_key(acme)
    cid = turn(gateway_ready, key, "/echo hi").json()["conversation_id"]
    with django_capture_on_commit_callbacks(execute=True):
        api_key_revoke(api_key=ApiKey.objects.get(key_id=key.split("_")[1]))
    base = gateway_ready.base_url
    # Revocation reaches the gateway within a second (turns before it are still taken).
    wait_for(lambda: turn(gateway_ready, key, "/echo again", conversation_id=cid).status_code == 401)
    before = orjson.loads(get_redis().get(contract.conversation_key(cid)))
    assert turn(gateway_ready, key, "/echo again", conversation_id=cid).status_code == 401
    assert httpx.get(f"{base}/v1/conversations/{cid}", headers=_headers(key)).status_code == 401
    assert httpx.post(f"{base}/v1/conversations/{cid}/close", headers=_headers(key)).status_code == 401
    after = orjson.loads(get_redis().get(contract.conversation_key(cid)))
    assert after["status"] == "open" and after["turns"] == before["turns"]


@pytest.mark.parametrize(("body", "param"), [
    ({"model": MODEL}, "message"),
    ({"model": MODEL, "message": ""}, "message"),
    ({"model": MODEL, "message": 7}, "message"),
    ({"model": MODEL, "message": "hi", "channel": "carrier-pigeon"}, "channel"),
    ({"model": MODEL, "message": "hi", "language": "english please"}, "language"),
    ({"model": MODEL, "message": "hi", "customer_id": "no spaces allowed"}, "customer_id"),
    ({"model": MODEL, "message": "x" * 8_001}, "message"),
    ({"model": MODEL, "message": "hi", "metadata": {"blob": "x" * 3_000}}, "metadata"),
    ({"model": MODEL, "message": "hi", "metadata": ["not", "an", "object"]}, "metadata"),
    ({"model": MODEL, "message": "hi", "metadata": {"deep": orjson.loads(b"[" * 300 + b"]" * 300)}}, "metadata"),
    ({"model": MODEL, "message": "hi", "metadata": {"deep": orjson.loads(b"[" * 20 + b"]" * 20)}}, "metadata"),
    ({"model": MODEL, "message": "hi", "stream": "yes"}, "stream"),
    ({"model": MODEL, "message": "hi", "conversation_id": 12}, "conversation_id"),
    ({"message": "hi"}, "model"),
])
def test_malformed_turns_are_openai_shaped_400s(gateway_ready, acme, issue_key, body, param):
    answer = httpx.post(f"{gateway_ready.base_url}/v1/conversation", headers=_headers(issue_key(acme)), json=body)
    assert answer.status_code == 400, answer.text
    error = answer.json()["error"]
    assert error["type"] == "invalid_request_error" and error["param"] == param


def test_non_json_and_wrong_methods(gateway_ready, acme, issue_key):
    key = issue_key(acme)
    base = gateway_ready.base_url
    garbled = httpx.post(f"{base}/v1/conversation", headers={**_headers(key), "content-type": "application/json"},
                         content=b"{not json")
    assert garbled.status_code == 400 and garbled.json()["error"]["code"] == "invalid_json"
    listed = httpx.post(f"{base}/v1/conversation", headers=_headers(key), json=["message"])
    assert listed.status_code == 400 and listed.json()["error"]["code"] == "invalid_json"
    assert httpx.get(f"{base}/v1/conversation", headers=_headers(key)).status_code == 405
    assert httpx.post(f"{base}/v1/conversations/conv_abcdefghijklmnopqrstuvwx",
                      headers=_headers(key)).status_code == 405
    unknown = httpx.get(f"{base}/v1/conversations/conv_abcdefghijklmnopqrstuvwx/transcript", headers=_headers(key))
    assert unknown.status_code == 404 and unknown.json()["error"]["code"] == "unknown_url"


def test_a_later_turn_may_not_change_the_channel(gateway_ready, acme, issue_key):
    key = issue_key(acme)
    cid = turn(gateway_ready, key, "/echo hi", channel="sms").json()["conversation_id"]
    answer = turn(gateway_ready, key, "/echo hi", conversation_id=cid, channel="email")
    assert answer.status_code == 400 and answer.json()["error"]["code"] == "conversation_mismatch"
    assert turn(gateway_ready, key, "/echo hi", conversation_id=cid, channel="sms").status_code == 200


def test_over_quota_is_429_and_the_turn_is_not_kept(gateway_ready, acme, issue_key, django_capture_on_commit_callbacks):
    from billing import services

    key = issue_key(acme)
    cid = turn(gateway_ready, key, "/echo first").json()["conversation_id"]
    with django_capture_on_commit_callbacks(execute=True):
        services.tenant_quota_set(tenant=acme, rpm_limit=1)
    statuses = []

    def refused():
        answer = turn(gateway_ready, key, "/echo again", conversation_id=cid)
        statuses.append(answer)
        return answer.status_code == 429

    wait_for(refused, timeout=5)
    error = statuses[-1]
    assert error.json()["error"]["code"] == "rate_limit_exceeded" and "retry-after" in error.headers
    with django_capture_on_commit_callbacks(execute=True):
        services.tenant_quota_set(tenant=acme, rpm_limit=None)
    kept = sum(1 for answer in statuses if answer.status_code == 200)
    assert len(httpx.get(f"{gateway_ready.base_url}/v1/conversations/{cid}",
                         headers=_headers(key)).json()["turns"]) == 2 * (1 + kept)


def test_every_turn_is_one_usage_event_billed_to_the_key(gateway_ready, acme, issue_key, unthrottled):
    unthrottled(acme)
    key = issue_key(acme)
    key_id = key.split("_")[1]
    cid = turn(gateway_ready, key, "/echo one").json()["conversation_id"]
    turn(gateway_ready, key, "/echo two", conversation_id=cid)
    httpx.get(f"{gateway_ready.base_url}/v1/conversations/{cid}", headers=_headers(key))  # not billed
    events = ingested(2)
    assert {e.key_id for e in events} == {key_id} and {e.endpoint for e in events} == {"chat.completions"}
    assert all(e.status == 200 and e.completion_tokens > 0 for e in events)
    assert events[1].prompt_tokens > events[0].prompt_tokens  # the history was sent


def test_two_turns_at_once_are_both_kept_one_after_the_other(gateway_ready, acme, issue_key, unthrottled):
    unthrottled(acme)
    key = issue_key(acme)
    cid = turn(gateway_ready, key, "/echo start").json()["conversation_id"]

    async def both():
        async with httpx.AsyncClient(base_url=gateway_ready.base_url, headers=_headers(key), timeout=30) as client:
            return await asyncio.gather(*(
                client.post("/v1/conversation", json={"conversation_id": cid, "message": f"/echo turn {n}"})
                for n in (1, 2)))

    answers = asyncio.run(both())
    assert [a.status_code for a in answers] == [200, 200]
    shown = httpx.get(f"{gateway_ready.base_url}/v1/conversations/{cid}", headers=_headers(key)).json()
    texts = [t["text"] for t in shown["turns"]]
    assert len(texts) == 6 and texts[:2] == ["/echo start"] * 2
    assert sorted(texts[2::2]) == ["/echo turn 1", "/echo turn 2"]
    assert texts[3] == texts[2] and texts[5] == texts[4]  # each reply follows its own message


def test_redaction_keeps_identifiers_out_of_the_stored_history(gateway_ready, acme, issue_key, upstream_bodies,
                                                               django_capture_on_commit_callbacks):
    from tenants.services import tenant_redaction_set

    with django_capture_on_commit_callbacks(execute=True):
        tenant_redaction_set(tenant=acme, mode="restore")
    key = issue_key(acme)  # a new key: the gateway reads its tenant's record (restore mode) afresh
    first = turn(gateway_ready, key, "/echo call me on 0412 345 678 or jo@example.com")
    assert first.status_code == 200
    assert first.json()["reply"] == "/echo call me on 0412 345 678 or jo@example.com"  # restored for the client
    cid = first.json()["conversation_id"]
    second = turn(gateway_ready, key, "/echo my other number is 0498 765 432", conversation_id=cid)
    assert second.json()["reply"] == "/echo my other number is 0498 765 432"
    sent = orjson.dumps(upstream_bodies[-1]).decode()
    assert "0412" not in sent and "0498" not in sent and "jo@example.com" not in sent
    shown = httpx.get(f"{gateway_ready.base_url}/v1/conversations/{cid}", headers=_headers(key)).json()
    stored = orjson.dumps(shown["turns"]).decode()
    assert "0412" not in stored and "0498" not in stored and "jo@example.com" not in stored
    assert "[AU_PHONE_1]" in shown["turns"][0]["text"] and "[AU_PHONE_2]" in shown["turns"][2]["text"]
    raw = get_redis().get(contract.conversation_key(cid))
    assert b"0412" not in raw and b"0498" not in raw


def test_curl_runs_a_conversation(gateway_ready, acme, issue_key):
    key = issue_key(acme)
    script = textwrap.dedent(f"""\
        curl -sS {gateway_ready.base_url}/v1/conversation \\
          -H 'Authorization: Bearer {key}' -H 'Content-Type: application/json' \\
          --data-binary @- <<'JSON'
        {{"model": "{MODEL}", "message": "/echo G'day, I'm not happy with my bill", "channel": "voice",
          "language": "en-AU", "customer_id": "cust-9"}}
        JSON
        """)
    done = subprocess.run(["bash", "-c", script], capture_output=True, text=True, timeout=60, check=True)
    answer = orjson.loads(done.stdout)
    assert answer["reply"] == "/echo G'day, I'm not happy with my bill"
    assert answer["sentiment"]["label"] == "negative"
    cid = answer["conversation_id"]
    close = subprocess.run(["curl", "-sS", "-X", "POST", f"{gateway_ready.base_url}/v1/conversations/{cid}/close",
                            "-H", f"Authorization: Bearer {key}"], capture_output=True, text=True, timeout=60,
                           check=True)
    assert orjson.loads(close.stdout)["status"] == "closed"


EMBEDDER = "intfloat/e5-mistral-7b-instruct"  # the simulator's embedding model


@pytest.fixture
def embedding_scorer(acme, django_capture_on_commit_callbacks, unthrottled):
    from tenants.services import tenant_conversation_settings_set

    unthrottled(acme)
    with django_capture_on_commit_callbacks(execute=True):
        tenant_conversation_settings_set(tenant=acme, sentiment_scorer="embedding", sentiment_model=EMBEDDER)


def test_the_embedding_scorer_embeds_through_the_dispatch_billed_to_the_key(gateway_ready, acme, issue_key,
                                                                           embedding_scorer):
    key = issue_key(acme)
    answer = turn(gateway_ready, key, "/echo I'm not happy at all")
    assert answer.status_code == 200, answer.text
    cid = answer.json()["conversation_id"]
    shown = httpx.get(f"{gateway_ready.base_url}/v1/conversations/{cid}", headers=_headers(key)).json()
    assert shown["turns"][0]["sentiment"]["scorer"] == "embedding"
    assert shown["turns"][0]["sentiment"]["fallback"] == ""
    turn(gateway_ready, key, "/echo thanks", conversation_id=cid)
    events = ingested(4)  # each turn's embedding (with the exemplars), each turn's chat completion
    assert sorted(e.endpoint for e in events) == ["chat.completions"] * 2 + ["embeddings"] * 2
    assert {e.key_id for e in events} == {key.split("_")[1]}


def test_the_exemplars_are_never_billed_to_another_tenant(gateway_ready, acme, bluegum, issue_key, embedding_scorer,
                                                          django_capture_on_commit_callbacks, unthrottled):
    """Each tenant pays for the exemplars only with its own turn: the first tenant to use a model doesn't pay for
    the others' (the same turn costs every tenant the same)."""
    from tenants.services import tenant_conversation_settings_set

    unthrottled(bluegum)
    with django_capture_on_commit_callbacks(execute=True):
        tenant_conversation_settings_set(tenant=bluegum, sentiment_scorer="embedding", sentiment_model=EMBEDDER)
    first, second = issue_key(acme), issue_key(bluegum)
    assert turn(gateway_ready, first, "/echo I'm not happy at all").status_code == 200
    assert turn(gateway_ready, second, "/echo I'm not happy at all").status_code == 200
    embeddings = [e for e in ingested(4) if e.endpoint == "embeddings"]
    by_tenant = {str(e.tenant_id): e.prompt_tokens for e in embeddings}
    assert len(embeddings) == 2 and set(by_tenant) == {str(acme.pk), str(bluegum.pk)}
    assert by_tenant[str(acme.pk)] == by_tenant[str(bluegum.pk)]


def test_a_failing_embedding_falls_back_to_the_lexicon_and_says_why(gateway_ready, acme, issue_key,
                                                                   embedding_scorer):
    key = issue_key(acme, allowed_models=[MODEL])  # the key may not use the embedding model
    answer = turn(gateway_ready, key, "/echo I'm not happy at all")
    assert answer.status_code == 200 and answer.json()["sentiment"]["label"] == "negative"
    cid = answer.json()["conversation_id"]
    scored = httpx.get(f"{gateway_ready.base_url}/v1/conversations/{cid}",
                       headers=_headers(key)).json()["turns"][0]["sentiment"]
    assert scored["scorer"] == "lexicon" and scored["fallback"] == "embedding_failed: 403 model_not_allowed"


def test_a_turn_that_asked_for_redaction_keeps_the_conversation_redacted(gateway_ready, acme, issue_key):
    key = issue_key(acme)
    first = turn(gateway_ready, key, "/echo my number is 0412 345 678", headers={"x-wattle-redact": "true"})
    assert first.json()["reply"] == "/echo my number is [AU_PHONE_1]"  # redact mode: no originals back
    cid = first.json()["conversation_id"]
    second = turn(gateway_ready, key, "/echo and my email is jo@example.com", conversation_id=cid)
    assert second.json()["reply"] == "/echo and my email is [AU_EMAIL_1]"
    raw = get_redis().get(contract.conversation_key(cid))
    assert b"0412" not in raw and b"jo@example.com" not in raw


@pytest.fixture
def conversation_limits(gateway_ready, monkeypatch):
    """Change the running gateway's conversation limits for one test."""
    import dataclasses

    from inference.gateway.app import gateway

    api = gateway.conversations

    def change(**values):
        limits = dataclasses.replace(api.limits, **values)
        monkeypatch.setattr(api, "limits", limits)
        monkeypatch.setattr(api.store, "_limits", limits)

    return change


def test_a_conversation_past_its_turn_limit_is_refused(gateway_ready, acme, issue_key, conversation_limits):
    conversation_limits(turns=4)
    key = issue_key(acme)
    cid = turn(gateway_ready, key, "/echo one").json()["conversation_id"]
    assert turn(gateway_ready, key, "/echo two", conversation_id=cid).status_code == 200
    third = turn(gateway_ready, key, "/echo three", conversation_id=cid)
    assert third.status_code == 400 and third.json()["error"]["code"] == "conversation_too_long"


def test_a_turn_waits_for_the_conversations_lock_then_gives_up_with_409(gateway_ready, acme, issue_key,
                                                                         conversation_limits):
    conversation_limits(lock_wait_s=0.3)
    key = issue_key(acme)
    cid = turn(gateway_ready, key, "/echo one").json()["conversation_id"]
    get_redis().set(contract.conversation_lock_key(cid), b"someone-else", px=10_000)
    busy = turn(gateway_ready, key, "/echo two", conversation_id=cid)
    assert busy.status_code == 409 and busy.json()["error"]["code"] == "conversation_busy"
    assert busy.headers["retry-after"] == "1"
    get_redis().delete(contract.conversation_lock_key(cid))
    assert turn(gateway_ready, key, "/echo two", conversation_id=cid).status_code == 200


def test_state_expires_when_idle_and_the_lock_is_released(gateway_ready, acme, issue_key):
    key = issue_key(acme)
    cid = turn(gateway_ready, key, "/echo one").json()["conversation_id"]
    client = get_redis()
    assert 23 * 3600 < client.pttl(contract.conversation_key(cid)) / 1000 <= 24 * 3600
    assert not client.exists(contract.conversation_lock_key(cid))
    httpx.post(f"{gateway_ready.base_url}/v1/conversations/{cid}/close", headers=_headers(key))
    assert 0 < client.pttl(contract.conversation_key(cid)) / 1000 <= 24 * 3600
    assert b"/echo one" not in client.get(contract.conversation_key(cid))  # no text once closed


def _stream_turn(server, key: str, body: dict) -> tuple[int, list[str]]:
    events = []
    with httpx.stream("POST", f"{server.base_url}/v1/conversation", headers=_headers(key), timeout=30,
                      json={**body, "stream": True}) as response:
        for line in response.iter_lines():
            if line.startswith("data: "):
                events.append(line[6:])
        return response.status_code, events


def test_a_stream_that_fails_midway_keeps_no_turn(gateway_ready, acme, issue_key, simulator):
    key = issue_key(acme)
    cid = turn(gateway_ready, key, "/echo first").json()["conversation_id"]
    simulator.control(abort_after_tokens=2)
    try:
        status, events = _stream_turn(gateway_ready, key, {"conversation_id": cid,
                                                           "message": "/echo a long enough message to fail"})
    finally:
        simulator.control(abort_after_tokens=None)
    assert status == 200 and events[-1] == "[DONE]"
    assert orjson.loads(events[-2])["error"]  # the protocol's mid-stream error frame, no conversation.turn
    assert not any(orjson.loads(e).get("object") == "conversation.turn" for e in events[:-1])
    shown = httpx.get(f"{gateway_ready.base_url}/v1/conversations/{cid}", headers=_headers(key)).json()
    assert len(shown["turns"]) == 2


def test_restore_mode_streams_the_originals_and_stores_placeholders(gateway_ready, acme, issue_key,
                                                                    django_capture_on_commit_callbacks):
    from tenants.services import tenant_redaction_set

    with django_capture_on_commit_callbacks(execute=True):
        tenant_redaction_set(tenant=acme, mode="restore")
    key = issue_key(acme)
    message = "/echo ring me on 0412 345 678 please"
    status, events = _stream_turn(gateway_ready, key, {"model": MODEL, "message": message})
    assert status == 200
    final = orjson.loads(events[-2])
    assert final["reply"] == message
    streamed = "".join(c["choices"][0]["delta"].get("content") or ""
                       for c in map(orjson.loads, events[:-2]) if c.get("choices"))
    assert streamed == message
    shown = httpx.get(f"{gateway_ready.base_url}/v1/conversations/{final['conversation_id']}",
                      headers=_headers(key)).json()
    assert [t["text"] for t in shown["turns"]] == ["/echo ring me on [AU_PHONE_1] please"] * 2


def test_a_suspended_organisation_is_refused_with_402(gateway_ready, acme, issue_key,
                                                      django_capture_on_commit_callbacks):
    from tenants.services import tenant_set_status

    key = issue_key(acme)
    cid = turn(gateway_ready, key, "/echo hi").json()["conversation_id"]
    with django_capture_on_commit_callbacks(execute=True):
        tenant_set_status(tenant=acme, status="suspended", reason="test")
    answer = wait_for(lambda: (a := turn(gateway_ready, key, "/echo hi", conversation_id=cid)).status_code == 402
                      and a)
    assert answer.json()["error"]["code"] == "account_suspended"


def test_a_redacted_conversation_keeps_no_identifier_from_its_metadata(gateway_ready, acme, issue_key):
    """Metadata is stored with the conversation (Redis, GET, the closed record, analytics): in a redacted
    conversation its strings are redacted too, else an identifier put there (a callback number) would sit beside
    a history that promises placeholders only. A later turn repeating the same metadata still matches."""
    key = issue_key(acme)
    metadata = {"queue": "faults", "callback": "0412 345 678", "contact": {"email": "jo@example.com"}}
    headers = {"x-wattle-redact": "true"}
    first = turn(gateway_ready, key, "/echo hi", metadata=metadata, headers=headers)
    assert first.status_code == 200, first.text
    cid = first.json()["conversation_id"]
    again = turn(gateway_ready, key, "/echo again", conversation_id=cid, metadata=metadata, headers=headers)
    assert again.status_code == 200, again.text
    shown = httpx.get(f"{gateway_ready.base_url}/v1/conversations/{cid}", headers=_headers(key)).json()
    assert shown["metadata"] == {"queue": "faults", "callback": "[AU_PHONE_1]", "contact": {"email": "[AU_EMAIL_1]"}}
    raw = get_redis().get(contract.conversation_key(cid))
    assert b"0412" not in raw and b"jo@example.com" not in raw
    closed = httpx.post(f"{gateway_ready.base_url}/v1/conversations/{cid}/close", headers=_headers(key))
    assert closed.status_code == 200
    stream = b"".join(value for _id, fields in get_redis().xrange(contract.conversations_closed_stream_key())
                      for value in fields.values())
    assert cid.encode() in stream
    assert b"0412" not in stream and b"jo@example.com" not in stream


def test_a_turn_asking_for_redaction_sends_no_identifier_from_the_earlier_history(gateway_ready, acme, issue_key,
                                                                                  upstream_bodies):
    """``x-wattle-redact: true`` is honoured for everything the turn sends the model, the history included: an
    earlier turn sent without it must not carry an identifier out with this one. From then on the stored history
    holds placeholders (a conversation redacted once stays redacted)."""
    key = issue_key(acme)
    first = turn(gateway_ready, key, "/echo call me on 0412 345 678")
    assert first.status_code == 200
    cid = first.json()["conversation_id"]
    second = turn(gateway_ready, key, "/echo my email is jo@example.com", conversation_id=cid,
                  headers={"x-wattle-redact": "true"})
    assert second.status_code == 200, second.text
    sent = orjson.dumps(upstream_bodies[-1])
    assert b"0412 345 678" not in sent and b"jo@example.com" not in sent
    assert b"[AU_PHONE_1]" in sent and b"[AU_EMAIL_1]" in sent
    raw = get_redis().get(contract.conversation_key(cid))
    assert b"0412" not in raw and b"jo@example.com" not in raw


@pytest.mark.parametrize("answer", [
    b'{"data": [{"index": 0}]}',  # no embedding
    b'{"data": {"embedding": [1.0]}}',  # data not a list
    b'[{"embedding": [1.0]}]',  # not an object
    b'{"data": [{"embedding": [1.0], "index": "first"}, {"embedding": [1.0], "index": 1}]}',  # unorderable
    b"not json",
])
def test_a_malformed_embeddings_answer_is_an_embedding_failure_not_a_500(answer):
    """The scorer falls back to the lexicon on ``EmbeddingFailed``: an answer of the wrong shape from the embedding
    backend must become one (a KeyError or AttributeError would escape the turn as an unshaped 500)."""
    from core import sentiment
    from inference.gateway.conversations import _vectors_of

    with pytest.raises(sentiment.EmbeddingFailed) as failed:
        _vectors_of(answer)
    assert failed.value.reason == "malformed_embedding"
    assert _vectors_of(b'{"data": [{"embedding": [2.0], "index": 1}, {"embedding": [1.0], "index": 0}]}') == [
        [1.0], [2.0]]


def test_a_store_failure_after_the_answer_is_an_openai_shaped_500(gateway_ready, acme, issue_key):
    """Redis refusing the turn's write (here: the decisions stream's key holds the wrong type) is an OpenAI-shaped
    500, logged, never an unshaped one; nothing is kept."""
    key = issue_key(acme)
    cid = turn(gateway_ready, key, "/echo hello").json()["conversation_id"]
    get_redis().set(contract.adm_decisions_stream_key(), b"not a stream")
    try:
        answer = turn(gateway_ready, key, "/echo I want to speak to a human", conversation_id=cid)
    finally:
        get_redis().delete(contract.adm_decisions_stream_key())
    assert answer.status_code == 500
    assert answer.json()["error"]["type"] == "server_error"
    state = orjson.loads(get_redis().get(contract.conversation_key(cid)))
    assert len(state["turns"]) == 2 and not state["escalation"]
    assert not get_redis().exists(contract.conversation_lock_key(cid))


def test_a_close_the_store_refuses_keeps_the_conversation_open_with_its_text(gateway_ready, acme, issue_key):
    """The closed record goes on its stream before the tombstone replaces the state: if the stream write fails, the
    text isn't dropped with no record to carry it, and the close can be retried."""
    key = issue_key(acme)
    cid = turn(gateway_ready, key, "/echo hello").json()["conversation_id"]
    get_redis().set(contract.conversations_closed_stream_key(), b"not a stream")
    try:
        answer = httpx.post(f"{gateway_ready.base_url}/v1/conversations/{cid}/close", headers=_headers(key))
    finally:
        get_redis().delete(contract.conversations_closed_stream_key())
    assert answer.status_code == 500 and answer.json()["error"]["type"] == "server_error"
    state = orjson.loads(get_redis().get(contract.conversation_key(cid)))
    assert state["status"] == "open" and state["turns"][0]["text"] == "/echo hello"
    retried = httpx.post(f"{gateway_ready.base_url}/v1/conversations/{cid}/close", headers=_headers(key))
    assert retried.status_code == 200 and retried.json()["status"] == "closed"
