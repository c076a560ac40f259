"""R-RED-1 through the real gateway: with redaction on, the prompt that reaches the backend (the simulator's
`/echo` says back exactly what it received) holds no identifier of the corpus; in restore mode the tenant's reply
has the originals again, in JSON and streamed; off leaves the body alone, on the zero-copy path; and
`x-wattle-redact: true` is honoured when the tenant's mode is off."""

from __future__ import annotations

import re

import httpx
import orjson
import pytest

from inference.gateway import validation
from tenants.services import tenant_redaction_set
from tests.conftest import wait_for
from tests.inference.redaction_corpus import VALID

MODEL = "mistralai/Mistral-7B-Instruct-v0.3"
TEXTUAL = ("AU_EMAIL", "AU_PASSPORT", "AU_DRIVER_LICENCE")

pytestmark = pytest.mark.django_db(transaction=True)


@pytest.fixture
def set_mode(django_capture_on_commit_callbacks, unthrottled):
    def set_(tenant, mode: str) -> None:
        unthrottled(tenant)  # the whole corpus is more than a Trial plan's minute allows
        with django_capture_on_commit_callbacks(execute=True):
            tenant_redaction_set(tenant=tenant, mode=mode)

    return set_


@pytest.fixture
def splices(monkeypatch) -> list[bytes]:
    """The bodies that went upstream as the client's own bytes with fields spliced in (the zero-copy path)."""
    seen: list[bytes] = []
    original = validation.splice_fields

    def spy(body, fields):
        seen.append(body)
        return original(body, fields)

    monkeypatch.setattr(validation, "splice_fields", spy)
    return seen


@pytest.fixture
def access_lines(monkeypatch) -> list[dict]:
    from inference.gateway.app import gateway

    lines: list[dict] = []
    monkeypatch.setattr(gateway.access_log, "write", lambda line: lines.append(orjson.loads(line)))
    return lines


def _batches(size: int = 60) -> list[list[tuple[str, str, str]]]:
    return [VALID[i:i + size] for i in range(0, len(VALID), size)]


def _echo_prompt(batch) -> str:
    return "/echo " + "\n".join(sentence for _, _, sentence in batch)


def _leaks(batch, text: str) -> list[str]:
    digits_of_text = re.sub(r"\D", "", text)
    leaked = []
    for kind, value, _ in batch:
        if value in text or (kind not in TEXTUAL and re.sub(r"\D", "", value) in digits_of_text):
            leaked.append(f"{kind}: {value}")
    return leaked


def _chat(server, key: str, content: str, *, stream: bool = False, headers: dict | None = None) -> str:
    body = {"model": MODEL, "messages": [{"role": "user", "content": content}], "max_tokens": 4000}
    auth = {"Authorization": f"Bearer {key}", **(headers or {})}
    if not stream:
        response = httpx.post(f"{server.base_url}/v1/chat/completions", headers=auth, json=body, timeout=60)
        assert response.status_code == 200, response.text
        return response.json()["choices"][0]["message"]["content"]
    pieces = []
    with httpx.stream("POST", f"{server.base_url}/v1/chat/completions", headers=auth, json={**body, "stream": True},
                      timeout=60) as response:
        assert response.status_code == 200
        for line in response.iter_lines():
            if line.startswith("data: {"):
                chunk = orjson.loads(line[6:])
                for choice in chunk["choices"]:
                    pieces.append(choice["delta"].get("content") or "")
    return "".join(pieces)


def test_redact_mode_keeps_every_corpus_identifier_from_the_backend(gateway_ready, acme, issue_key, set_mode,
                                                                   access_lines):
    set_mode(acme, "redact")
    key = issue_key(acme)
    for batch in _batches():
        echoed = _chat(gateway_ready, key, _echo_prompt(batch))
        assert _leaks(batch, echoed) == []
        assert "[AU_" in echoed  # the placeholders are what the model saw, and what the tenant gets back
    # The line is written as the request settles, just after the answer went out.
    wait_for(lambda: len([line for line in access_lines if line.get("tenant") == str(acme.pk)]) >= len(_batches()))
    counts = [line["redactions"] for line in access_lines if line.get("tenant") == str(acme.pk)]
    assert len(counts) == len(_batches()) and all(counts)
    assert sum(sum(c.values()) for c in counts) >= len(VALID)
    assert all(isinstance(v, int) for c in counts for v in c.values())  # counts only, never a value


def test_restore_mode_gives_the_tenant_its_originals_back_in_json_and_streams(gateway_ready, acme, issue_key,
                                                                              set_mode):
    set_mode(acme, "restore")
    key = issue_key(acme)
    batch = VALID[::9]
    prompt = _echo_prompt(batch)
    assert _chat(gateway_ready, key, prompt) == prompt
    # Streamed token by token: placeholders arrive split over several events and are put back whole.
    assert _chat(gateway_ready, key, prompt, stream=True) == prompt


def test_off_leaves_the_body_alone_on_the_zero_copy_path(gateway_ready, acme, issue_key, splices, access_lines):
    key = issue_key(acme)
    prompt = _echo_prompt(VALID[:20])
    assert _chat(gateway_ready, key, prompt) == prompt
    assert len(splices) == 1  # the client's bytes went upstream, the salt spliced in
    wait_for(lambda: access_lines)
    assert access_lines[-1]["redactions"] is None


def test_redaction_that_finds_nothing_keeps_the_zero_copy_path(gateway_ready, acme, issue_key, set_mode, splices,
                                                               access_lines):
    set_mode(acme, "redact")
    key = issue_key(acme)
    assert _chat(gateway_ready, key, "/echo Order 4567891 arrived on 12/03/2026.") == (
        "/echo Order 4567891 arrived on 12/03/2026.")
    assert len(splices) == 1
    wait_for(lambda: access_lines)
    assert access_lines[-1]["redactions"] == {}


def test_the_header_asks_for_redaction_when_the_tenant_has_it_off(gateway_ready, acme, issue_key, splices):
    key = issue_key(acme)
    batch = VALID[::11]
    echoed = _chat(gateway_ready, key, _echo_prompt(batch), headers={"x-wattle-redact": "true"})
    assert _leaks(batch, echoed) == []
    assert splices == []  # re-encoded, since it changed


def test_a_header_cannot_turn_the_tenants_redaction_off(gateway_ready, bluegum, issue_key, set_mode):
    set_mode(bluegum, "redact")
    key = issue_key(bluegum)
    echoed = _chat(gateway_ready, key, "/echo TFN 123 456 782", headers={"x-wattle-redact": "false"})
    assert echoed == "/echo TFN [AU_TFN_1]"


def test_completions_prompts_are_redacted_and_restored(gateway_ready, acme, issue_key, set_mode):
    set_mode(acme, "restore")
    key = issue_key(acme)
    prompt = "/echo Call 0412 345 678 or email jo.bloggs@example.com.au, TFN 123 456 782."
    auth = {"Authorization": f"Bearer {key}"}
    body = {"model": MODEL, "prompt": prompt, "max_tokens": 200}
    response = httpx.post(f"{gateway_ready.base_url}/v1/completions", headers=auth, json=body, timeout=30)
    assert response.status_code == 200, response.text
    assert response.json()["choices"][0]["text"] == prompt
    set_mode(acme, "redact")
    key = issue_key(acme, name="after the change")
    response = httpx.post(f"{gateway_ready.base_url}/v1/completions", headers={"Authorization": f"Bearer {key}"},
                          json=body, timeout=30)
    assert response.json()["choices"][0]["text"] == "/echo Call [AU_PHONE_1] or email [AU_EMAIL_1], TFN [AU_TFN_1]."
