from __future__ import annotations

import httpx
import pytest

from inference.models import Backend


@pytest.mark.django_db
def test_readyz_is_ready_when_database_redis_and_a_backend_answer(client, backend):
    response = client.get("/readyz")
    assert response.status_code == 200, response.content
    body = response.json()
    assert body["status"] == "ready"
    assert body["checks"]["database"] == "ok" and body["checks"]["redis"] == "ok"
    assert body["checks"]["backends"] == {"sim-a": "ok"}


@pytest.mark.django_db
def test_readyz_is_503_and_says_which_when_no_backend_is_healthy(client, backend, simulator):
    Backend.objects.create(name="nowhere", base_url="http://127.0.0.1:9")
    httpx.post(f"{simulator.base_url}/sim/control", json={"down": True}).raise_for_status()
    try:
        response = client.get("/readyz")
    finally:
        httpx.post(f"{simulator.base_url}/sim/control", json={"down": False}).raise_for_status()
    assert response.status_code == 503
    assert response.json()["checks"]["backends"] == {"nowhere": "unhealthy", "sim-a": "unhealthy"}


@pytest.mark.django_db
def test_readyz_ignores_disabled_backends_and_needs_one(client):
    Backend.objects.create(name="off", base_url="http://127.0.0.1:9", enabled=False)
    response = client.get("/readyz")
    assert response.status_code == 503
    assert response.json()["checks"]["backends"] == {}


def test_readyz_reports_an_unreachable_redis(client, db, settings, backend):
    settings.REDIS_URL = "redis://127.0.0.1:1/0"  # readyz opens a fresh client from settings each time
    response = client.get("/readyz")
    assert response.status_code == 503
    assert response.json()["checks"]["redis"].startswith("error")


def test_web_process_freezes_its_start_up_objects_for_the_garbage_collector():
    import subprocess
    import sys

    code = (
        "import django, gc; django.setup()\n"
        "from portal.lifespan import tune_gc\n"
        "tune_gc(); frozen = gc.get_freeze_count(); tune_gc()\n"
        "print(frozen > 10_000, gc.get_threshold()[0], gc.get_freeze_count() == frozen)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True)
    assert out.stdout.split() == ["True", "10000", "True"]
