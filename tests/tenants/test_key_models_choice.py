"""A key's allowed models, and a platform price's model, are chosen from the models the backends serve: the
form offers them as a list, and an unknown name (another provider's, or a typo) is a form error or a 400 with a
clear message, never a key that only fails on its first request."""

from __future__ import annotations

import orjson
import pytest

from billing.models import ModelPrice
from core import contract
from core.redis import get_redis
from inference.models import Backend
from tenants.models import ApiKey

SERVED = "mistralai/Mistral-7B-Instruct-v0.3"
PROBED = "mistralai/Mistral-Large-Instruct-2411"


@pytest.fixture
def served(db):
    """One backend declares its model; another's was found by the data plane's probe."""
    Backend.objects.create(name="syd-1", base_url="http://10.0.0.5:8000", served_models=[SERVED])
    Backend.objects.create(name="syd-2", base_url="http://10.0.0.6:8000")
    Backend.objects.create(name="off", base_url="http://10.0.0.7:8000", served_models=["retired"], enabled=False)
    get_redis().set(contract.backend_health_key("syd-2"), orjson.dumps({"source": "gateway", "models": [PROBED]}))


def test_key_form_offers_the_served_models(owner_client, acme, served):
    form = owner_client.get(f"/t/{acme.slug}/keys/new/").context["form"]
    assert [value for value, _ in form.fields["allowed_models"].choices] == [SERVED, PROBED]
    body = owner_client.get(f"/t/{acme.slug}/keys/new/").content.decode()
    assert f'value="{PROBED}"' in body and 'type="checkbox"' in body and "retired" not in body


def test_key_made_with_chosen_models(owner_client, acme, served, django_capture_on_commit_callbacks):
    with django_capture_on_commit_callbacks(execute=True):
        response = owner_client.post(f"/t/{acme.slug}/keys/new/", {"name": "ivr", "scopes": ["inference"],
                                                                   "allowed_models": [PROBED]})
    assert response.status_code == 201
    assert ApiKey.objects.get(tenant=acme).allowed_models == [PROBED]


@pytest.mark.parametrize("model", ["gpt-4o", "retired", "x" * 300])
def test_unknown_model_is_a_form_error(owner_client, acme, served, model):
    response = owner_client.post(f"/t/{acme.slug}/keys/new/", {"name": "ivr", "scopes": ["inference"],
                                                               "allowed_models": [SERVED, model]})
    assert response.status_code == 400
    [message] = response.context["form"].errors["allowed_models"]
    assert "is not a model the backends serve" in message
    assert not ApiKey.objects.exists()


def test_no_backend_means_no_choice_and_every_model(owner_client, acme, db):
    form = owner_client.get(f"/t/{acme.slug}/keys/new/").context["form"]
    assert list(form.fields["allowed_models"].choices) == []
    assert "No backend serves a model yet" in form.fields["allowed_models"].help_text


def _auth(key: str) -> dict:
    return {"HTTP_AUTHORIZATION": f"Bearer {key}"}


def test_management_api_refuses_an_unknown_model(api_client, acme, served, management_key):
    key = management_key(acme)
    response = api_client.post("/api/v1/keys", {"name": "ivr", "allowed_models": [SERVED, "gpt-4o"]},
                               format="json", **_auth(key))
    assert response.status_code == 400
    error = response.json()["error"]
    assert error["param"] == "allowed_models"
    assert "'gpt-4o' is not a model the backends serve" in error["message"] and SERVED in error["message"]
    assert not ApiKey.objects.filter(name="ivr").exists()


def test_management_api_accepts_a_served_model(api_client, acme, served, management_key,
                                               django_capture_on_commit_callbacks):
    key = management_key(acme)
    with django_capture_on_commit_callbacks(execute=True):
        response = api_client.post("/api/v1/keys", {"name": "ivr", "allowed_models": [PROBED]}, format="json",
                                   **_auth(key))
    assert response.status_code == 201 and response.json()["allowed_models"] == [PROBED]


def test_redis_away_still_offers_the_declared_models(owner_client, acme, served, monkeypatch):
    from redis.exceptions import ConnectionError as RedisConnectionError

    import inference.selectors

    class Away:
        def mget(self, *_args):
            raise RedisConnectionError("down")

    monkeypatch.setattr(inference.selectors, "get_redis", lambda: Away())
    form = owner_client.get(f"/t/{acme.slug}/keys/new/").context["form"]
    assert [value for value, _ in form.fields["allowed_models"].choices] == [SERVED]


# --- a platform price's model ----------------------------------------------------------------------
def test_price_form_offers_served_and_already_priced_models(staff_client, served):
    ModelPrice.objects.create(model="old-model")
    choices = dict(staff_client.get("/staff/plans/").context["price_form"].fields["model"].choices)
    assert SERVED in choices and PROBED in choices
    assert choices["old-model"] == "old-model (priced, not served now)"


@pytest.mark.parametrize("model", ["gpt-4o", "", "retired"])
def test_price_for_an_unknown_model_is_refused(staff_client, served, model):
    response = staff_client.post("/staff/prices/", {"model": model, "input_per_1m_aud": "0.001",
                                                    "output_per_1m_aud": "0.002"})
    assert response.status_code == 400
    assert response.context["price_form"].errors["model"]
    assert not ModelPrice.objects.exists()


def test_price_for_a_probed_model_is_saved(staff_client, served, django_capture_on_commit_callbacks):
    with django_capture_on_commit_callbacks(execute=True):
        response = staff_client.post("/staff/prices/", {"model": PROBED, "input_per_1m_aud": "0.001",
                                                        "output_per_1m_aud": "0.002"})
    assert response.status_code == 302 and ModelPrice.objects.filter(model=PROBED).exists()


def test_tenants_cannot_set_prices(owner_client, served):
    response = owner_client.post("/staff/prices/", {"model": SERVED, "input_per_1m_aud": "0",
                                                    "output_per_1m_aud": "0"})
    assert response.status_code in (302, 403, 404) and not ModelPrice.objects.exists()
