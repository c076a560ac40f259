"""R-AUD-1 through the real gateway and ingest: every inference's access record carries the end customer the tenant
named (``x-wattle-customer-id``, else the body's ``user``), SHA-256 digests of the prompt the client sent and of the
reply the replica returned (computed here independently from what was sent and received), redaction counts, and
never any text of either; a malformed customer id is an OpenAI-shaped 400."""

from __future__ import annotations

import hashlib
import json

import httpx
import orjson
import pytest

from core import contract
from tests.conftest import ingested

MODEL = "mistralai/Mistral-7B-Instruct-v0.3"
EMBED = "intfloat/e5-mistral-7b-instruct"
TFN = "123 456 782"

pytestmark = pytest.mark.django_db(transaction=True)


@pytest.fixture
def key(acme, issue_key):
    return issue_key(acme)


def _sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _canonical(value) -> bytes:
    """The documented prompt encoding (docs/audit.md), with the standard library rather than the gateway's orjson."""
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()


def _post(server, key: str, body: dict, headers: dict | None = None) -> httpx.Response:
    return httpx.post(f"{server.base_url}/v1/chat/completions", json=body, timeout=30,
                      headers={"Authorization": f"Bearer {key}", **(headers or {})})


def _no_text(row, *texts: str) -> None:
    values = " ".join(str(getattr(row, f.attname)) for f in row._meta.concrete_fields)
    for text in texts:
        assert text not in values


@pytest.fixture
def access_lines(monkeypatch) -> list[dict]:
    from inference.gateway.app import gateway

    lines: list[dict] = []
    monkeypatch.setattr(gateway.access_log, "write", lambda line: lines.append(orjson.loads(line)))
    return lines


def test_a_json_answer_records_the_customer_and_both_digests(gateway_ready, key, access_lines):
    messages = [{"role": "system", "content": "Be brief, ünd kind."},
                {"role": "user", "content": "/echo The Ballarat outage is fixed."}]
    response = _post(gateway_ready, key, {"model": MODEL, "messages": messages, "user": "acct-42"})
    assert response.status_code == 200, response.text
    reply = "".join(choice["message"]["content"] for choice in response.json()["choices"])
    assert "Ballarat" in reply

    [row] = ingested(1)
    assert row.customer_id == "acct-42"
    assert row.prompt_sha256 == _sha(_canonical(messages))
    assert row.reply_sha256 == _sha(reply.encode())
    assert row.redactions is None  # redaction was off
    _no_text(row, "Ballarat", "kind")
    # The access-log line has the digests but not the customer id: that is personal, and stays out of logs.
    [line] = [line for line in access_lines if line["request_id"] == row.request_id]
    assert line["prompt_sha256"] == row.prompt_sha256 and line["reply_sha256"] == row.reply_sha256
    assert line["customer_id"] == "" and "acct-42" not in orjson.dumps(access_lines).decode()


def test_a_stream_records_the_header_customer_and_the_streamed_text_digest(gateway_ready, key):
    messages = [{"role": "user", "content": "/echo Your refund of $42 is on its way."}]
    body = {"model": MODEL, "messages": messages, "stream": True, "user": "from-the-sdk"}
    pieces = []
    with httpx.stream("POST", f"{gateway_ready.base_url}/v1/chat/completions", json=body, timeout=30,
                      headers={"Authorization": f"Bearer {key}", "x-wattle-customer-id": "crm:7781"}) as response:
        assert response.status_code == 200
        for line in response.iter_lines():
            if line.startswith("data: {"):
                for choice in orjson.loads(line[6:])["choices"]:
                    pieces.append(choice["delta"].get("content") or "")
    reply = "".join(pieces)
    assert "refund" in reply

    [row] = ingested(1)
    assert row.stream and row.customer_id == "crm:7781"  # the header wins over the body's user
    assert row.prompt_sha256 == _sha(_canonical(messages))
    assert row.reply_sha256 == _sha(reply.encode())
    _no_text(row, "refund")


def test_a_completion_and_an_embedding_are_digested_too(gateway_ready, key):
    auth = {"Authorization": f"Bearer {key}"}
    done = httpx.post(f"{gateway_ready.base_url}/v1/completions", headers=auth, timeout=30,
                      json={"model": MODEL, "prompt": "/echo Hello there", "max_tokens": 16})
    assert done.status_code == 200, done.text
    vectors = httpx.post(f"{gateway_ready.base_url}/v1/embeddings", headers=auth, timeout=30,
                         json={"model": EMBED, "input": ["one", "two"]})
    assert vectors.status_code == 200, vectors.text
    rows = {row.endpoint: row for row in ingested(2)}
    completion = rows["completions"]
    assert completion.prompt_sha256 == _sha(_canonical("/echo Hello there"))
    assert completion.reply_sha256 == _sha("".join(c["text"] for c in done.json()["choices"]).encode())
    assert completion.customer_id == ""  # none named
    assert rows["embeddings"].reply_sha256 == _sha(vectors.content)  # the JSON body as relayed
    assert rows["embeddings"].prompt_sha256 == _sha(_canonical(["one", "two"]))


def test_a_redacted_request_stores_counts_and_no_identifier(gateway_ready, key):
    messages = [{"role": "user", "content": f"/echo my TFN is {TFN}, call me"}]
    response = _post(gateway_ready, key, {"model": MODEL, "messages": messages},
                     headers={"x-wattle-redact": "true", "x-wattle-customer-id": "acct-9"})
    assert response.status_code == 200, response.text
    reply = response.json()["choices"][0]["message"]["content"]
    assert TFN not in reply and "[AU_TFN_1]" in reply  # what the replica saw and said back

    [row] = ingested(1)
    assert row.redactions == {"AU_TFN": 1} and row.customer_id == "acct-9"
    assert row.prompt_sha256 == _sha(_canonical(messages))  # the prompt as the client sent it
    assert row.reply_sha256 == _sha(reply.encode())
    _no_text(row, TFN, "123456782", "call me")


@pytest.mark.parametrize(("headers", "extra", "param"), [
    ({"x-wattle-customer-id": "x" * 65}, {}, "x-wattle-customer-id"),
    ({"x-wattle-customer-id": "~erased"}, {"user": "acct-1"}, "x-wattle-customer-id"),
    ({}, {"user": 42}, "user"),
])
def test_a_malformed_customer_id_is_a_400(gateway_ready, key, headers, extra, param):
    body = {"model": MODEL, "messages": [{"role": "user", "content": "hi"}], **extra}
    response = _post(gateway_ready, key, body, headers=headers)
    assert response.status_code == 400
    error = response.json()["error"]
    assert error["param"] == param and error["type"] == "invalid_request_error"
    [row] = ingested(1)
    assert row.status == 400 and row.customer_id == "" and row.reply_sha256 == ""


@pytest.mark.parametrize("user", ["two words", "tab\tseparated", "line\nbreak", "jo@example.com (Jo Citizen)",
                                  "u" * 65, "ünïcode"])
def test_any_string_user_is_accepted_and_kept_as_its_digest(gateway_ready, key, user):
    """OpenAI accepts any string as ``user`` and SDKs pass along whatever the application gives them: a drop-in
    client must not start failing on it. One that isn't a valid customer id is kept as ``sha256:`` and 40 hex
    digits of its SHA-256 (bounded, no raw text in the access record; the tenant can compute it for a request)."""
    body = {"model": MODEL, "messages": [{"role": "user", "content": "hi"}], "user": user}
    response = _post(gateway_ready, key, body)
    assert response.status_code == 200, response.text
    [row] = ingested(1)
    assert row.customer_id == "sha256:" + hashlib.sha256(user.encode()).hexdigest()[:40]
    assert contract.valid_customer_id(row.customer_id)


def test_the_prompt_digest_is_of_the_messages_as_the_client_sent_them(gateway_ready, key):
    """The gateway rewrites some messages for the replica (a ``developer`` role becomes ``system``, a tool call id
    Mistral's template can't take gets a new one, ``safe_prompt`` adds a system message): the digest is of what the
    client sent, which is what a tenant holding its request can recompute."""
    messages = [{"role": "developer", "content": "Be brief."},
                {"role": "user", "content": "What's the weather?"},
                {"role": "assistant", "content": None, "tool_calls": [{"id": "call_abc-DEF-123456", "type": "function",
                                                                       "function": {"name": "weather",
                                                                                    "arguments": "{}"}}]},
                {"role": "tool", "tool_call_id": "call_abc-DEF-123456", "content": "Sunny"}]
    sent = json.loads(json.dumps(messages))
    response = _post(gateway_ready, key, {"model": MODEL, "messages": messages, "safe_prompt": True})
    assert response.status_code == 200, response.text
    [row] = ingested(1)
    assert row.prompt_sha256 == _sha(_canonical(sent))


def test_a_deeply_nested_prompt_is_a_400_not_a_500(gateway_ready, key):
    """The prompt's digest is taken before validation: a body nested past what the encoder takes (orjson stops at 255
    levels; the parser takes 1,024) must still get validation's 400."""
    deep = b"[" * 400 + b"]" * 400
    body = b'{"model": "' + MODEL.encode() + b'", "messages": [{"role": "user", "content": ' + deep + b"}]}"
    response = httpx.post(f"{gateway_ready.base_url}/v1/chat/completions", content=body, timeout=30,
                          headers={"Authorization": f"Bearer {key}", "content-type": "application/json"})
    assert response.status_code == 400, response.text
    assert response.json()["error"]["type"] == "invalid_request_error"
