"""A new customer, in Chromium, from sign-up to a first successful request that they pasted: sign up, confirm
the email from the message's link, turn on two-factor authentication (the code computed here, as an app would),
go on from the recovery codes to the console, create a key, copy the example request from the page and run it
in a real shell (curl) and in Python (OpenAI's library) against the live portal and the vLLM simulator. Every
page on the way passes the accessibility check and is no wider than a 390 px phone screen. No dead end: each
step is reached by following what the page offers.

With WATTLE_SHOTS=<dir>, each page is also saved as a screenshot at desktop and phone width."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
from django.core import mail

from tenants.models import ApiKey, Tenant
from tests.e2e.helpers import accessibility_problems, phone_width_problems, totp

pytestmark = [pytest.mark.browser, pytest.mark.django_db(transaction=True)]

PASSWORD = "wattle-e2e-passphrase-2026"
EMAIL = "founder@quokka.example"


@pytest.fixture
def clipboard_page(browser):
    """A desktop browser whose page may write and read the clipboard, so "Copy" is tested as a person uses it."""
    context = browser.new_context(viewport={"width": 1280, "height": 900})
    page = context.new_page()
    errors: list[str] = []
    page.on("console", lambda msg: errors.append(msg.text) if msg.type == "error" else None)
    page.console_errors = errors
    yield page
    context.close()


class Walk:
    def __init__(self, page, base: str):
        self.page, self.base, self.visited = page, base, []
        self.shots = Path(os.environ["WATTLE_SHOTS"]) if os.environ.get("WATTLE_SHOTS") else None

    def check(self, name: str) -> None:
        """The page in view passes the accessibility check and fits a phone; screenshots if asked for."""
        page = self.page
        page.wait_for_load_state("load")
        self.visited.append(page.url)
        assert accessibility_problems(page) == [], (name, page.url)
        assert phone_width_problems(page) is None, name
        if self.shots:
            self.shots.mkdir(parents=True, exist_ok=True)
            page.screenshot(path=str(self.shots / f"walk-{len(self.visited):02d}-{name}-desktop.png"), full_page=True)
            size = page.viewport_size
            page.set_viewport_size({"width": 390, "height": 844})
            page.screenshot(path=str(self.shots / f"walk-{len(self.visited):02d}-{name}-phone.png"), full_page=True)
            page.set_viewport_size(size)


def copied(page, button_name: str) -> str:
    """Press the page's copy button and read what it put on the clipboard."""
    page.context.grant_permissions(["clipboard-read", "clipboard-write"], origin=page.url.split("/t/")[0])
    page.get_by_role("button", name=button_name, exact=True).click()
    page.get_by_role("button", name="Copied").wait_for()
    return page.evaluate("navigator.clipboard.readText()")


def run_in_shell(script: str, **env: str) -> dict:
    result = subprocess.run(["bash", "-c", script], capture_output=True, text=True, timeout=30,
                            env={"PATH": os.environ.get("PATH", "/usr/bin:/bin"), **env})
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


def test_new_customer_pastes_a_first_request_without_a_dead_end(clipboard_page, gateway_ready, tmp_path):
    page, base = clipboard_page, gateway_ready.base_url
    walk = Walk(page, base)
    mail.outbox.clear()

    # 1. From the home page to the sign-up form.
    page.goto(f"{base}/")
    walk.check("home")
    page.get_by_role("link", name="Create account").first.click()
    page.wait_for_url("**/accounts/signup/")
    walk.check("signup")
    page.get_by_label("Email", exact=True).fill(EMAIL)
    page.get_by_label("Organisation name").fill("Quokka Calls")
    page.get_by_label("Billing email").fill("accounts@quokka.example")
    page.get_by_label("State or territory").select_option("WA")
    page.get_by_label("Password", exact=True).fill(PASSWORD)
    page.get_by_label("Password (again)").fill(PASSWORD)
    page.get_by_role("checkbox", name=re.compile("collection notice")).check()
    page.get_by_role("button", name="Create account").click()
    page.wait_for_url("**/accounts/confirm-email/")
    walk.check("verification-sent")
    tenant = Tenant.objects.get(name="Quokka Calls")

    # 2. The confirmation email: branded, plain text and HTML, its link confirms the address.
    message = next(m for m in mail.outbox if EMAIL in m.to)
    assert message.alternatives and message.alternatives[0][1] == "text/html"
    link = re.search(r"https?://\S+/accounts/confirm-email/\S+/", message.body).group(0)
    page.goto(link)
    walk.check("confirm-email")
    page.get_by_role("button", name="Confirm").click()

    # 3. An owner turns on two-factor authentication before the console opens.
    page.wait_for_url("**/account/mfa-required/**")
    walk.check("mfa-required")
    page.get_by_role("link", name="Set up an authenticator app").click()
    page.wait_for_url("**/reauthenticate/**")
    walk.check("confirm-access")
    page.get_by_label("Password").fill(PASSWORD)
    page.get_by_role("button", name="Confirm").click()
    page.wait_for_url("**/2fa/totp/activate/**")
    walk.check("totp-activate")
    secret = page.get_by_label("Authenticator secret").input_value()
    page.get_by_label("Authenticator code").fill(totp(secret))
    page.get_by_role("button", name="Activate").click()
    page.wait_for_url("**/2fa/recovery-codes/**")
    walk.check("recovery-codes")
    assert page.get_by_role("link", name="Download codes").is_visible()
    assert page.get_by_role("link", name="Generate new codes").is_visible()

    # 4. On to the console: with no key yet, that is "Get started".
    page.get_by_role("link", name="Continue to the console").click()
    page.wait_for_url(f"**/t/{tenant.slug}/welcome/")
    walk.check("get-started")
    assert page.get_by_role("link", name="Open the playground").get_attribute("href") == \
        f"/t/{tenant.slug}/playground/"
    page.get_by_role("link", name="Create a key").click()
    page.wait_for_url("**/keys/new/**")
    walk.check("key-form")
    page.get_by_label("Name").fill("IVR production")
    page.get_by_role("button", name="Create key").click()
    page.locator("#new-secret").wait_for()
    walk.check("key-created")
    key = page.locator("#new-secret").input_value()
    assert ApiKey.objects.filter(tenant=tenant, key_id=key.split("_")[1]).exists()

    # 5. The first request, pasted: the copied curl in a real shell, against the live portal and simulator.
    curl = copied(page, "Copy curl example")
    assert key in curl and "G'day" in curl
    reply = run_in_shell(curl)
    assert reply.get("object") == "chat.completion", reply
    assert reply["choices"][0]["message"]["content"]

    # ... and the Python example, with OpenAI's library, as it is copied.
    page.get_by_role("tab", name="Python").click()
    python = copied(page, "Copy Python example")
    script = tmp_path / "example.py"
    script.write_text(python)
    result = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip()

    # 6. "Get started" now says step 1 is done, and its own curl (reading $WATTLE_API_KEY) works too.
    page.get_by_role("link", name="I have stored it").click()
    page.wait_for_url(f"**/keys/{key.split('_')[1]}/")
    walk.check("key-detail")
    page.get_by_role("link", name="Get started").click()
    walk.check("get-started-done")
    assert page.get_by_text("Done: IVR production").is_visible()
    curl = copied(page, "Copy curl example")
    assert "$WATTLE_API_KEY" in curl
    reply = run_in_shell(curl, WATTLE_API_KEY=key)
    assert reply["choices"][0]["message"]["content"]
    assert not [e for e in page.console_errors if "Content Security Policy" in e or "404" in e], page.console_errors
