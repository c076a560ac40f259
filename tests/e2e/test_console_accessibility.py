"""Every console page, in Chromium, at desktop and phone width: labelled controls, named buttons and links,
WCAG AA contrast, one heading, no horizontal scrolling, keyboard reachable actions, and a CSP that holds."""

from __future__ import annotations

import time

import pytest

from tenants.models import ApiKey, Membership, Role
from tests.conftest import PASSWORD, add_totp
from tests.e2e.helpers import accessibility_problems, fits_width, keyboard_reaches, scroll_width, totp

pytestmark = [pytest.mark.browser, pytest.mark.django_db(transaction=True)]

PAGES = [
    "/t/{slug}/", "/t/{slug}/welcome/", "/t/{slug}/playground/", "/t/{slug}/keys/", "/t/{slug}/keys/new/",
    "/t/{slug}/keys/{key}/", "/t/{slug}/keys/{key}/rotate/", "/t/{slug}/members/", "/t/{slug}/members/{member}/remove/",
    "/t/{slug}/usage/", "/t/{slug}/logs/", "/t/{slug}/limits/", "/t/{slug}/billing/", "/t/{slug}/audit/",
    "/t/{slug}/settings/", "/t/{slug}/data-processing/", "/t/{slug}/privacy-requests/", "/account/mfa-required/",
    "/accounts/2fa/", "/accounts/2fa/webauthn/", "/accounts/2fa/recovery-codes/", "/accounts/email/",
    "/accounts/sessions/", "/accounts/password/change/",
]


def _sign_in_with_totp(page, base_url: str, user) -> None:
    page.goto(f"{base_url}/accounts/login/")
    page.get_by_label("Email").fill(user.email)
    page.get_by_label("Password").fill(PASSWORD)
    page.get_by_role("button", name="Sign in", exact=True).click()
    page.get_by_label("Code").fill(totp("JBSWY3DPEHPK3PXP"))
    page.get_by_role("button", name="Sign in").click()
    page.wait_for_url("**/t/**")


@pytest.fixture
def signed_in_owner(alice, acme, bluegum, member_of, issue_key):
    from allauth.mfa.recovery_codes.internal.auth import RecoveryCodes

    add_totp(alice)
    RecoveryCodes.activate(alice)  # the recovery codes page is one of the account pages checked
    Membership.objects.create(tenant=bluegum, user=alice, role=Role.DEVELOPER)  # two tenants: the switcher shows
    issue_key(acme, name="IVR production")
    member_of(acme, Role.DEVELOPER, email="dev@acme.example")
    return alice


@pytest.fixture
def near_budget(acme, django_capture_on_commit_callbacks):
    """Acme on a plan, 90% through its monthly tokens: the budget banner shows and the rows are highlighted."""
    from billing.models import BudgetAlert, Plan
    from billing.services import plan_save
    from core.quotas import windows_at as periods

    with django_capture_on_commit_callbacks(execute=True):
        plan_save(plan=Plan(slug="starter", name="Starter", is_default=True, rpm_limit=60, tpm_limit=10_000,
                            monthly_token_budget=1_000_000))
    _count_tokens(acme, 900_000)
    BudgetAlert.objects.create(tenant=acme, budget="month_tokens", period=periods(time.time()).month,
                               threshold=80, used=850_000, limit=1_000_000)


def _count_tokens(tenant, tokens: int) -> None:
    """Have the data plane's limiter count ``tokens`` for the tenant this month (a real admission). In a
    thread: Playwright keeps an event loop on this one."""
    import asyncio
    from concurrent.futures import ThreadPoolExecutor

    from core.redis import new_async_redis
    from inference.gateway.auth import KeyRecord
    from inference.gateway.limits import Limiter

    record = KeyRecord(key_id="a11yseed0000", tenant=str(tenant.pk), tenant_status="active", hash="",
                       scopes=frozenset({"inference"}), models=frozenset(), expires=None, revoked=False,
                       tenant_limits={"month_tokens": 1_000_000})

    async def admit() -> None:
        client = new_async_redis()
        try:
            await Limiter(client).admit(record, tokens=tokens, spend=0)
        finally:
            await client.aclose()

    with ThreadPoolExecutor(1) as pool:
        pool.submit(asyncio.run, admit()).result()


def _urls(acme) -> list[str]:
    key = ApiKey.objects.get(tenant=acme)
    member = Membership.objects.get(tenant=acme, role=Role.DEVELOPER)
    return [p.format(slug=acme.slug, key=key.key_id, member=member.pk) for p in PAGES]


@pytest.mark.parametrize("fixture", ["page", "phone_page"])
def test_console_pages_pass_the_accessibility_check(request, fixture, portal_server, signed_in_owner, acme,
                                                    near_budget):
    page = request.getfixturevalue(fixture)
    errors: list[str] = []
    page.on("console", lambda msg: errors.append(msg.text) if msg.type == "error" else None)
    _sign_in_with_totp(page, portal_server.base_url, signed_in_owner)
    for url in _urls(acme):
        response = page.goto(f"{portal_server.base_url}{url}")
        assert response.status == 200, url
        assert accessibility_problems(page) == [], url
        # Measured against the fixed viewport (390 px on the phone), not the window: see helpers.fits_width.
        assert fits_width(page), f"{url} is {scroll_width(page)}px wide at {page.viewport_size['width']}px"
    assert not [e for e in errors if "Content Security Policy" in e], errors


def test_console_works_from_the_keyboard(page, portal_server, signed_in_owner, acme, bluegum):
    _sign_in_with_totp(page, portal_server.base_url, signed_in_owner)
    page.goto(f"{portal_server.base_url}/t/{acme.slug}/keys/")
    assert keyboard_reaches(page, ".skip-link")
    assert keyboard_reaches(page, "a:text('Create a key')")
    # The tenant switcher opens with the keyboard and lists both organisations.
    assert keyboard_reaches(page, ".switcher summary")
    page.keyboard.press("Enter")
    assert page.get_by_role("link", name="Bluegum Calls (developer)").is_visible()
    for _ in range(5):  # on through the menu to Bluegum, then follow it
        page.keyboard.press("Tab")
        if "Bluegum" in page.evaluate("document.activeElement.textContent"):
            break
    page.keyboard.press("Enter")
    page.wait_for_url(f"**/t/{bluegum.slug}/")
    assert page.get_by_role("heading", name="Bluegum Calls").is_visible()


def test_api_docs_render_under_the_strict_csp(page, portal_server, db):
    errors: list[str] = []
    page.on("console", lambda msg: errors.append(msg.text) if msg.type == "error" else None)
    page.goto(f"{portal_server.base_url}/api/docs/")
    page.get_by_text("Wattle management API").first.wait_for()
    assert page.get_by_text("/api/v1/keys").first.is_visible()
    assert not [e for e in errors if "Content Security Policy" in e], errors


STAFF_PAGES = ["/staff/", "/staff/tenants/{slug}/", "/staff/tenants/{slug}/keys/{key}/limits/", "/staff/limits/",
               "/staff/plans/", "/staff/plans/starter/", "/staff/backends/"]


@pytest.fixture
def staff_session(portal_server, staff):
    """A staff session that has used its passkey (registering one in the browser is tests/e2e/test_staff_passkey.py's
    job), handed to the browser as its session cookie."""
    from django.conf import settings
    from django.test import Client

    from tests.conftest import sign_in

    client = sign_in(Client(), staff, passkey_used=True)
    return {"name": settings.SESSION_COOKIE_NAME, "value": client.cookies[settings.SESSION_COOKIE_NAME].value,
            "url": portal_server.base_url}


@pytest.mark.parametrize("fixture", ["page", "phone_page"])
def test_staff_pages_pass_the_accessibility_check(request, fixture, portal_server, staff_session, acme, issue_key,
                                                  near_budget, unthrottled):
    from billing.models import CostGuardAction

    unthrottled(acme)  # the key's own limit is above the Trial plan's
    issue_key(acme, name="IVR production", limits={"rpm_limit": 30})
    CostGuardAction.objects.create(tenant=acme, kind="throttle", reason="Acme Contact spent A$30.00 in the last hour "
                                   "against a baseline of A$1.00 an hour", last_hour_aud=30, baseline_hour_aud=1)
    page = request.getfixturevalue(fixture)
    errors: list[str] = []
    page.on("console", lambda msg: errors.append(msg.text) if msg.type == "error" else None)
    page.context.add_cookies([staff_session])
    key = ApiKey.objects.get(tenant=acme)
    for url in [p.format(slug=acme.slug, key=key.key_id) for p in STAFF_PAGES]:
        response = page.goto(f"{portal_server.base_url}{url}")
        assert response.status == 200, url
        assert page.get_by_role("button", name="Lift for Acme Contact").is_visible(), url
        assert accessibility_problems(page) == [], url
        assert fits_width(page), f"{url} scrolls sideways at {page.viewport_size['width']}px"
    assert "Acme Contact" in page.goto(f"{portal_server.base_url}/staff/limits/").text()
    assert not [e for e in errors if "Content Security Policy" in e], errors
