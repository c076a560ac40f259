"""An agent uses the playground in a real browser: signs in, sends a message and watches the reply stream in,
stops a long generation (the replica counts the abort), and sees each reply's figures; in customer mode, an
angry persona's turns move the sentiment gauge and raise the escalation banner."""

from __future__ import annotations

import re

import pytest
from playwright.sync_api import expect

from tests.conftest import PASSWORD, wait_for
from tests.e2e.helpers import A11Y_SCRIPT

pytestmark = pytest.mark.django_db(transaction=True)
MODEL = "mistralai/Mistral-7B-Instruct-v0.3"


def _sign_in(page, base_url: str, email: str) -> None:
    page.goto(f"{base_url}/accounts/login/")
    page.get_by_label("Email").fill(email)
    page.get_by_label("Password").fill(PASSWORD)
    page.get_by_role("button", name="Sign in", exact=True).click()


@pytest.fixture
def paced(simulator):
    simulator.control(tpot_ms=30)
    yield
    simulator.control(tpot_ms=0)


def test_an_agent_watches_a_reply_stream_then_stops_a_long_one(page, gateway_ready, acme, member_of, simulator,
                                                                paced):
    agent = member_of(acme, "agent")
    _sign_in(page, gateway_ready.base_url, agent.email)
    page.wait_for_url(f"**/t/{acme.slug}/**")
    page.get_by_role("link", name="Playground").click()
    page.wait_for_url(f"**/t/{acme.slug}/playground/")
    expect(page.locator("#pg-status")).to_have_text("Connected.")
    page.get_by_label("Model", exact=True).select_option(MODEL)  # the served models arrived with "ready"

    page.get_by_label("Max tokens").fill("40")
    page.get_by_label("Message").fill("Hello, how are you?")
    page.get_by_role("button", name="Send").click()
    reply = page.locator(".pg-assistant").last
    # Streaming: text is on the page while the reply is still being written.
    expect(page.locator(".pg-assistant[aria-busy=true] .pg-content")).not_to_have_text("")
    expect(reply.locator(".pg-stats")).to_contain_text(
        re.compile(r"\d+ tokens out, \d+ in · first token \d+ ms · total \d+ ms · A\$\d+\.\d+"), timeout=10_000)

    disconnects = simulator.state()["counters"]["client_disconnects"]
    page.get_by_label("Max tokens").fill("2000")
    page.get_by_label("Message").fill("Tell me a long story.")
    page.get_by_role("button", name="Send").click()
    long_reply = page.locator(".pg-assistant").last
    expect(long_reply.locator(".pg-content")).not_to_have_text("")
    page.get_by_role("button", name="Stop").click()
    expect(long_reply.locator(".pg-stats")).to_contain_text("stopped", timeout=10_000)
    wait_for(lambda: simulator.state()["counters"]["client_disconnects"] == disconnects + 1)  # vLLM aborted it
    out = int(re.search(r"(\d+) tokens out", long_reply.locator(".pg-stats").inner_text()).group(1))
    assert 0 < out < 2000

    with page.expect_download() as download:
        page.get_by_role("button", name="Export as JSON").click()
    assert download.value.suggested_filename.endswith(".json")
    page.get_by_role("button", name="Reset").click()
    expect(page.locator(".pg-message")).to_have_count(0)

    assert page.evaluate(A11Y_SCRIPT) == []
    assert not [e for e in page.console_errors if "Content Security Policy" in e]


def test_an_angry_customers_turns_raise_the_escalation_banner(page, gateway_ready, acme, member_of):
    from audit.models import AuditEntry

    agent = member_of(acme, "agent")
    _sign_in(page, gateway_ready.base_url, agent.email)
    page.wait_for_url(f"**/t/{acme.slug}/**")
    page.goto(f"{gateway_ready.base_url}/t/{acme.slug}/playground/")
    expect(page.locator("#pg-status")).to_have_text("Connected.")
    page.get_by_label("Model", exact=True).select_option(MODEL)
    page.get_by_label("Max tokens").fill("8")
    persona_turn = page.get_by_role("button", name="Customer\u2019s turn")
    expect(persona_turn).to_be_hidden()
    page.get_by_label("Simulate a customer conversation").check()
    page.get_by_label("Channel").select_option("whatsapp")
    page.get_by_label("Customer persona").select_option("angry")
    expect(persona_turn).to_be_visible()
    banner = page.get_by_role("alert").filter(has_text="Escalate")
    gauge = page.get_by_role("meter", name="Customer sentiment")

    persona_turn.click()
    expect(page.locator(".pg-user .pg-role").last).to_have_text("Customer")
    expect(page.locator("#pg-sentiment-value")).to_contain_text("negative")
    expect(page.locator(".pg-assistant .pg-stats").last).to_contain_text("A$", timeout=10_000)
    assert float(gauge.get_attribute("value")) <= -0.5
    expect(banner).to_have_count(0)  # one negative turn: not yet

    persona_turn.click()
    expect(banner).to_be_visible()
    expect(banner).to_contain_text("negative sentiment, 2 turns in a row")
    expect(page.locator(".pg-user .pg-stats")).to_have_count(2)  # each customer turn carries its sentiment
    expect(page.locator(".pg-assistant .pg-stats").last).to_contain_text("A$", timeout=10_000)
    wait_for(lambda: AuditEntry.objects.filter(action="adm.escalation", tenant=acme).count() == 2)
    assert [e.data["escalate"] for e in AuditEntry.objects.filter(action="adm.escalation").order_by("id")] == [
        False, True]

    assert page.evaluate(A11Y_SCRIPT) == []
    page.get_by_role("button", name="Reset").click()
    expect(banner).to_have_count(0)
    expect(page.locator("#pg-sentiment")).to_be_hidden()
    assert not [e for e in page.console_errors if "Content Security Policy" in e]


def test_an_agent_reopens_a_kept_conversation_from_history_and_continues_it(page, gateway_ready, acme, member_of,
                                                                           settings,
                                                                           django_capture_on_commit_callbacks):
    import base64
    import os

    from audit import envelope
    from audit.models import Transcript
    from audit.transcripts import transcripts_ingest
    from tenants.services import tenant_retention_set

    settings.AUDIT_TRANSCRIPT_KMS_KEY_ID = ""
    settings.AUDIT_TRANSCRIPT_LOCAL_KEK = base64.b64encode(os.urandom(32)).decode()
    envelope.forget()
    with django_capture_on_commit_callbacks(execute=True):
        tenant_retention_set(tenant=acme, days=7)
    agent = member_of(acme, "agent")
    _sign_in(page, gateway_ready.base_url, agent.email)
    page.wait_for_url(f"**/t/{acme.slug}/**")
    page.goto(f"{gateway_ready.base_url}/t/{acme.slug}/playground/")
    expect(page.locator("#pg-status")).to_have_text("Connected.")
    expect(page.locator("#pg-history-status")).to_contain_text("No conversations kept yet")
    page.get_by_label("Model", exact=True).select_option(MODEL)
    page.get_by_label("Max tokens").fill("40")
    page.get_by_label("Message").fill("/echo Remember the Banksia order")
    page.get_by_role("button", name="Send").click()
    expect(page.locator(".pg-assistant .pg-stats")).to_contain_text("tokens out", timeout=10_000)

    def stored(n: int):
        transcripts_ingest()
        return Transcript.objects.count() >= n

    wait_for(lambda: stored(1), timeout=10)
    page.get_by_role("button", name="Reset").click()
    expect(page.locator(".pg-message")).to_have_count(0)
    page.get_by_role("button", name="Refresh").click()
    kept = page.locator(".pg-history-open", has_text="/echo Remember the Banksia order")
    expect(kept).to_contain_text("1 turn")
    kept.click()
    expect(page.locator(".pg-message")).to_have_count(2)
    expect(page.locator(".pg-user .pg-content")).to_have_text("/echo Remember the Banksia order")
    expect(page.locator(".pg-assistant .pg-content")).not_to_have_text("")
    expect(kept).to_have_attribute("aria-current", "true")

    page.get_by_label("Message").fill("And the second thing?")
    page.get_by_role("button", name="Send").click()
    expect(page.locator(".pg-assistant").last.locator(".pg-stats")).to_contain_text("tokens out", timeout=10_000)
    wait_for(lambda: stored(2), timeout=10)
    assert Transcript.objects.values("conversation_id").distinct().count() == 1  # the same conversation, continued
    assert page.evaluate(A11Y_SCRIPT) == []
    assert not [e for e in page.console_errors if "Content Security Policy" in e]
    envelope.forget()
