"""Staff manage the backend pool: add, edit, drain, disable, remove — audited, published, staff only."""

from __future__ import annotations

import dataclasses

import pytest
from django.test import Client

from audit.models import AuditEntry
from core import contract
from core.redis import get_redis
from inference.models import Backend
from tests.conftest import add_totp, sign_in


def published() -> list[dict]:
    raw = get_redis().get(contract.backends_key())
    return [dataclasses.asdict(b) for b in contract.decode_backends(raw)] if raw else []


@pytest.fixture
def syd(db):
    return Backend.objects.create(name="syd-1", base_url="http://10.0.0.5:8000", served_models=["m"])


def test_staff_see_backends_with_health(staff_client, syd, simulator, django_capture_on_commit_callbacks):
    from inference import tasks

    Backend.objects.create(name="sim", base_url=simulator.base_url)
    tasks.probe_backends()
    body = staff_client.get("/staff/backends/").content.decode()
    assert "syd-1" in body and "http://10.0.0.5:8000" in body
    assert "healthy" in body and "unhealthy" in body


def test_staff_add_a_backend(staff_client, staff, django_capture_on_commit_callbacks):
    with django_capture_on_commit_callbacks(execute=True):
        response = staff_client.post("/staff/backends/", {
            "name": "mel-1", "base_url": "http://10.1.0.9:8000/", "region": "ap-southeast-4",
            "served_models": "mistralai/Mistral-7B-Instruct-v0.3, mistralai/Mistral-Large-Instruct-2411",
            "weight": 200, "max_concurrency": 64, "enabled": "on", "new_api_key": "vllm-secret",
        })
    assert response.status_code == 302
    backend = Backend.objects.get(name="mel-1")
    assert backend.base_url == "http://10.1.0.9:8000" and backend.api_key == "vllm-secret"
    assert backend.served_models == ["mistralai/Mistral-7B-Instruct-v0.3", "mistralai/Mistral-Large-Instruct-2411"]
    assert [b["name"] for b in published()] == ["mel-1"]
    entry = AuditEntry.objects.get(action="backend.create")
    assert entry.actor == staff and "vllm-secret" not in str(entry.data)


@pytest.mark.parametrize(
    ("field", "value", "message"),
    [
        ("region", "us-east-1", "Select a valid choice"),
        ("base_url", "not a url", "Enter a valid URL"),
        ("base_url", "http://10.0.0.1:8000/v1", "without /v1"),
        ("weight", "0", "at least 1"),
        ("name", "Has Spaces", "valid"),
    ],
)
def test_bad_backend_input_is_a_form_error(staff_client, field, value, message):
    data = {"name": "ok-1", "base_url": "http://10.0.0.1:8000", "region": "ap-southeast-2", "weight": 100,
            "max_concurrency": 10, field: value}
    response = staff_client.post("/staff/backends/", data)
    assert response.status_code == 400
    assert message in response.content.decode()
    assert not Backend.objects.exists()


def test_edit_keeps_the_api_key_unless_a_new_one_is_given(staff_client, syd, django_capture_on_commit_callbacks):
    syd.api_key = "old-secret"
    syd.save()
    page = staff_client.get("/staff/backends/syd-1/").content.decode()
    assert "old-secret" not in page
    with django_capture_on_commit_callbacks(execute=True):
        staff_client.post("/staff/backends/syd-1/", {
            "base_url": "http://10.0.0.6:8000", "region": "ap-southeast-2", "served_models": "m", "weight": 50,
            "max_concurrency": 8, "enabled": "on", "new_api_key": "",
        })
    syd.refresh_from_db()
    assert (syd.base_url, syd.weight, syd.api_key) == ("http://10.0.0.6:8000", 50, "old-secret")


@pytest.mark.parametrize(("action", "enabled", "draining"),
                         [("disable", False, False), ("drain", True, True), ("enable", True, False)])
def test_state_changes_are_published_and_audited(staff_client, syd, action, enabled, draining,
                                                 django_capture_on_commit_callbacks):
    with django_capture_on_commit_callbacks(execute=True):
        assert staff_client.post("/staff/backends/syd-1/state/", {"action": action}).status_code == 302
    syd.refresh_from_db()
    assert (syd.enabled, syd.draining) == (enabled, draining)
    assert (published()[0]["enabled"], published()[0]["draining"]) == (enabled, draining)
    assert AuditEntry.objects.filter(action="backend.state").count() == 1


def test_remove_a_backend(staff_client, syd, django_capture_on_commit_callbacks):
    with django_capture_on_commit_callbacks(execute=True):
        staff_client.post("/staff/backends/syd-1/delete/")
    assert not Backend.objects.exists() and published() == []
    assert AuditEntry.objects.filter(action="backend.delete").exists()


def test_unknown_backend_is_404(staff_client):
    assert staff_client.get("/staff/backends/nope/").status_code == 404


def test_tenants_and_anonymous_users_cannot_reach_backend_pages(client, alice, acme, syd):
    assert client.get("/staff/backends/").status_code == 302  # to the login page
    add_totp(alice)
    owner = sign_in(Client(), alice)
    assert owner.get("/staff/backends/").status_code == 404
    assert owner.post("/staff/backends/syd-1/state/", {"action": "disable"}).status_code == 404
    syd.refresh_from_db()
    assert syd.enabled


def test_staff_without_a_passkey_used_are_sent_to_use_it(staff):
    client = sign_in(Client(), staff, passkey_used=False)
    response = client.get("/staff/backends/")
    assert response.status_code == 302 and "webauthn" in response["Location"]
