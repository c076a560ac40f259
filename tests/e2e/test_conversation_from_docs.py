"""Issue #12's "works from the OpenAPI docs page": a signed-in member opens /api/docs/, switches to the inference API,
authorises with a fresh `inference` key, starts a conversation with POST /v1/conversation from Swagger UI's "Try it
out" (channel whatsapp, language en-AU, a customer id) and reads it back with GET /v1/conversations/{id}, all
under the strict CSP with no console error."""

from __future__ import annotations

import json
import re

import pytest
from playwright.sync_api import expect

from tests.conftest import add_totp, sign_in, wait_for

pytestmark = [pytest.mark.browser, pytest.mark.django_db(transaction=True)]
MODEL = "mistralai/Mistral-7B-Instruct-v0.3"
TIMEOUT = 15_000  # ms: Swagger UI renders after fetching the document; a turn waits on the simulator


@pytest.fixture
def public_url_elsewhere(settings):
    """WATTLE_BASE_URL names another host than the one the page is opened on (as a second host name, or `localhost`
    for `127.0.0.1`, would): "Try it out" must still call the page's own host, the only one its CSP allows."""
    from inference import openapi

    settings.WATTLE_BASE_URL = "https://api.wattle.example"
    openapi.document_bytes.cache_clear()
    yield
    openapi.document_bytes.cache_clear()


def _session_cookie(user, base_url: str) -> dict:
    from django.conf import settings
    from django.test import Client

    client = sign_in(Client(), user)
    return {"name": settings.SESSION_COOKIE_NAME, "value": client.cookies[settings.SESSION_COOKIE_NAME].value,
            "url": base_url}


def _execute(operation) -> dict:
    """Press Execute in an expanded, tried-out operation and return the live response's status and JSON body."""
    operation.get_by_role("button", name="Execute").click()
    live = operation.locator(".live-responses-table")
    live.wait_for(timeout=TIMEOUT)
    status = live.locator("tr.response td.response-col_status").first.inner_text().strip()
    body = live.locator("tr.response .response-col_description pre").first.inner_text()
    return {"status": status, "body": json.loads(body)}


def test_conversation_api_works_from_the_docs_page(page, gateway_ready, public_url_elsewhere, alice, acme, issue_key,
                                                    unthrottled):
    from core import contract
    from core.redis import get_redis
    from inference import openapi

    base = gateway_ready.base_url
    unthrottled(acme)
    wait_for(lambda: get_redis().get(contract.backend_health_key("sim-a")), timeout=10)
    key = issue_key(acme, name="docs page", scopes=["inference"])
    add_totp(alice)
    page.context.add_cookies([_session_cookie(alice, base)])

    page.goto(f"{base}/api/docs/")
    page.get_by_role("link", name="Inference API (/v1)").click()
    page.get_by_text("Wattle inference API").first.wait_for(timeout=TIMEOUT)

    # Authorize: the document's bearer scheme, applied to every /v1 operation.
    page.locator(".auth-wrapper").get_by_role("button", name="Authorize").click()
    dialog = page.locator(".modal-ux")
    dialog.get_by_label("auth-bearer-value").fill(key)
    dialog.get_by_role("button", name="Apply credentials").click()
    expect(dialog.get_by_role("button", name="Remove authorization")).to_be_visible()
    dialog.get_by_role("button", name="Close", exact=True).click()
    expect(dialog).to_be_hidden()

    turn = page.locator("#operations-Conversations-conversation")
    turn.locator(".opblock-summary").first.click()
    turn.get_by_role("button", name="Try it out").click()
    body = turn.locator("textarea.body-param__text")
    examples = openapi.document()["paths"]["/v1/conversation"]["post"]["requestBody"]["content"]["application/json"]
    assert json.loads(body.input_value()) == examples["examples"]["start"]["value"]  # offered: a valid first turn
    body.fill(json.dumps({"message": "G'day, where is my parcel?", "model": MODEL, "channel": "whatsapp",
                          "customer_id": "acct-1234", "language": "en-AU"}))
    answer = _execute(turn)
    assert answer["status"] == "200", answer
    reply = answer["body"]
    assert reply["object"] == "conversation.turn" and reply["conversation_id"] and reply["reply"]
    assert -1 <= reply["sentiment"]["score"] <= 1 and reply["sentiment"]["label"] in {"negative", "neutral",
                                                                                        "positive"}
    # The request Swagger UI shows carries the key as a bearer token.
    assert "Authorization: Bearer" in turn.locator(".curl-command").inner_text()

    conversation = page.locator("#operations-Conversations-conversations_retrieve")
    conversation.locator(".opblock-summary").first.click()
    conversation.get_by_role("button", name="Try it out").click()
    conversation.locator("input[placeholder=conversation_id]").fill(reply["conversation_id"])
    shown = _execute(conversation)
    assert shown["status"] == "200", shown
    state = shown["body"]
    assert state["id"] == reply["conversation_id"] and state["status"] == "open"
    assert state["channel"] == "whatsapp" and state["language"] == "en-AU" and state["customer_id"] == "acct-1234"
    assert [t["role"] for t in state["turns"]] == ["user", "assistant"]
    assert state["turns"][0]["text"] == "G'day, where is my parcel?"
    assert state["turns"][1]["text"] == reply["reply"]

    assert re.search(r"/v1/conversations/", conversation.locator(".request-url").inner_text())
    assert page.console_errors == [], page.console_errors  # a CSP violation is a console error
