"""The tenant console's model catalogue: the models the backends serve, their context length as the data plane
probed it, the tenant's own plan prices per million input and output tokens in A$, and the region; every member
may see it, nobody else."""

from __future__ import annotations

from decimal import Decimal

import orjson
import pytest
from django.test import Client

from billing import services
from billing.models import ModelPrice, Plan
from core import contract
from core.redis import get_redis
from inference.models import Backend
from tenants.models import Role
from tests.conftest import sign_in

SMALL = "mistralai/Mistral-7B-Instruct-v0.3"
LARGE = "mistralai/Mistral-Large-Instruct-2411"
EMBED = "intfloat/e5-mistral-7b-instruct"


@pytest.fixture
def served(db):
    Backend.objects.create(name="syd-1", base_url="http://10.0.0.5:8000", served_models=[SMALL, LARGE])
    Backend.objects.create(name="mel-1", base_url="http://10.1.0.5:8000", region="ap-southeast-4",
                           served_models=[LARGE])
    Backend.objects.create(name="syd-e", base_url="http://10.0.0.6:8000")  # its models: found by the probe
    Backend.objects.create(name="off", base_url="http://10.0.0.7:8000", served_models=["retired"], enabled=False)
    get_redis().set(contract.backend_health_key("syd-1"), orjson.dumps(
        {"source": "gateway", "models": [SMALL, LARGE], "max_model_len": {SMALL: 32768, LARGE: 131072}}))
    get_redis().set(contract.backend_health_key("syd-e"), orjson.dumps(
        {"source": "gateway", "models": [EMBED], "max_model_len": {EMBED: 4096}}))
    ModelPrice.objects.create(model=SMALL, input_per_1k_aud=Decimal("0.0002"), output_per_1k_aud=Decimal("0.0006"))
    ModelPrice.objects.create(model=LARGE, input_per_1k_aud=Decimal("0.003"), output_per_1k_aud=Decimal("0.009"))


def rows(body: str) -> list[str]:
    table = body.split('id="model-catalogue"', 1)[1].split("</table>", 1)[0]
    return [row.split("</tr>")[0] for row in table.split("<tr>")[2:]]


def test_members_see_models_context_prices_and_region(owner_client, acme, served):
    response = owner_client.get(f"/t/{acme.slug}/models/")
    assert response.status_code == 200
    body = response.content.decode()
    small, large, embed = (next(r for r in rows(body) if f"<code>{m}</code>" in r) for m in (SMALL, LARGE, EMBED))
    assert "32,768 tokens" in small and "A$0.20 per 1M tokens" in small and "A$0.60 per 1M tokens" in small
    assert "Sydney (ap-southeast-2)" in small
    assert "131,072 tokens" in large and "A$3.00 per 1M tokens" in large and "A$9.00 per 1M tokens" in large
    assert "Sydney (ap-southeast-2), Melbourne (ap-southeast-4)" in large
    assert "4,096 tokens" in embed and "No charge" in embed
    assert "retired" not in body
    assert f'href="/t/{acme.slug}/models/" aria-current="page">Models<' in body  # in the console's nav


def test_prices_are_the_tenants_plan_prices(owner_client, acme, served, django_capture_on_commit_callbacks):
    plan = Plan.objects.create(slug="premium", name="Premium", monthly_fee_aud=Decimal("10.00"))
    with django_capture_on_commit_callbacks(execute=True):
        services.plan_model_price_set(plan=plan, model=SMALL, input_per_1m_aud=Decimal("1.5"),
                                      output_per_1m_aud=Decimal("4.25"))
        services.tenant_quota_set(tenant=acme, plan=plan)
    body = owner_client.get(f"/t/{acme.slug}/models/").content.decode()
    small = next(r for r in rows(body) if f"<code>{SMALL}</code>" in r)
    assert "A$1.50 per 1M tokens" in small and "A$4.25 per 1M tokens" in small and "Premium" in body
    large = next(r for r in rows(body) if f"<code>{LARGE}</code>" in r)
    assert "A$3.00 per 1M tokens" in large  # the platform's, where the plan sets none


def test_no_model_served_says_so(owner_client, acme, db):
    body = owner_client.get(f"/t/{acme.slug}/models/").content.decode()
    assert "No model is being served right now" in body and 'id="model-catalogue"' not in body


@pytest.mark.parametrize("role", [Role.ADMIN, Role.DEVELOPER, Role.BILLING, Role.AGENT])
def test_every_role_may_see_it(acme, served, member_of, role):
    client = sign_in(Client(), member_of(acme, role))
    assert client.get(f"/t/{acme.slug}/models/").status_code == 200


def test_another_tenants_member_gets_404(acme, bluegum, bob, served):
    client = sign_in(Client(), bob)
    response = client.get(f"/t/{acme.slug}/models/")
    assert response.status_code == 404 and SMALL.encode() not in response.content


def test_anonymous_is_sent_to_sign_in(client, acme, served):
    response = client.get(f"/t/{acme.slug}/models/")
    assert response.status_code == 302 and "/accounts/login/" in response["Location"]


def test_only_get(owner_client, acme, served):
    assert owner_client.post(f"/t/{acme.slug}/models/").status_code == 405
