"""The model catalogue, the staff backends page and both tabs of the API docs in a real browser: they pass the
accessibility check and fit 390 px without sideways scrolling, and the docs render both descriptions under the
strict CSP."""

from __future__ import annotations

from decimal import Decimal

import pytest

from tests.conftest import add_totp, sign_in, wait_for
from tests.e2e.helpers import accessibility_problems, fits_width

pytestmark = [pytest.mark.browser, pytest.mark.django_db(transaction=True)]


def _cookie(client, base_url: str) -> dict:
    from django.conf import settings

    return {"name": settings.SESSION_COOKIE_NAME, "value": client.cookies[settings.SESSION_COOKIE_NAME].value,
            "url": base_url}


@pytest.mark.parametrize("fixture", ["page", "phone_page"])
def test_models_backends_and_docs_pages(request, fixture, gateway_ready, alice, acme, staff):
    from django.test import Client

    from billing.models import ModelPrice
    from core import contract
    from core.redis import get_redis

    base = gateway_ready.base_url
    wait_for(lambda: get_redis().get(contract.backend_health_key("sim-a")), timeout=10)
    ModelPrice.objects.create(model="mistralai/Mistral-7B-Instruct-v0.3", input_per_1k_aud=Decimal("0.0003"),
                              output_per_1k_aud=Decimal("0.0009"))
    add_totp(alice)
    page = request.getfixturevalue(fixture)
    errors: list[str] = []
    page.on("console", lambda msg: errors.append(msg.text) if msg.type == "error" else None)

    page.context.add_cookies([_cookie(sign_in(Client(), alice), base)])
    page.goto(f"{base}/t/{acme.slug}/models/")
    assert page.get_by_role("heading", name="Models").is_visible()
    assert page.get_by_text("A$0.30 per 1M tokens").first.is_visible()
    assert page.get_by_text("Sydney (ap-southeast-2)").first.is_visible()
    assert accessibility_problems(page) == [] and fits_width(page)

    for api, title, path in (("inference", "Wattle inference API", "/v1/chat/completions"),
                             ("management", "Wattle management API", "/api/v1/keys")):
        page.goto(f"{base}/api/docs/?api={api}")
        page.get_by_text(title).first.wait_for()
        assert page.get_by_text(path).first.is_visible()
        assert page.get_by_role("link", name="← Back to the console").is_visible()
        assert fits_width(page), f"{api} docs scroll sideways"

    page.context.clear_cookies()
    page.context.add_cookies([_cookie(sign_in(Client(), staff, passkey_used=True), base)])
    page.goto(f"{base}/staff/backends/")
    assert page.get_by_text("healthy", exact=True).first.is_visible()
    assert accessibility_problems(page) == [] and fits_width(page)
    assert not [e for e in errors if "Content Security Policy" in e], errors
