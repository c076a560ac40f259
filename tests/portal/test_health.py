from __future__ import annotations

import asyncio

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


# --- who sees the details, and how often the backends are probed ------------------------------------
class CountingBackend:
    """A backend at the network edge that counts the /health probes it answers."""

    def __init__(self) -> None:
        import http.server
        import threading

        counter = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self):
                if self.path == "/health":
                    with counter.lock:
                        counter.probes += 1
                self.send_response(200)
                self.send_header("content-length", "0")
                self.end_headers()

            def log_message(self, *args):
                pass

        self.probes = 0
        self.lock = threading.Lock()
        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def counting_backend(db):
    edge = CountingBackend()
    Backend.objects.create(name="counted", base_url=edge.url)
    yield edge
    edge.close()


@pytest.mark.django_db
def test_readyz_from_outside_gives_the_verdict_only(client, backend):
    response = client.get("/readyz", REMOTE_ADDR="203.0.113.9")
    assert response.status_code == 200
    assert response.json() == {"status": "ok"}


@pytest.mark.django_db
def test_readyz_from_outside_when_not_ready_names_nothing(client):
    Backend.objects.create(name="nowhere", base_url="http://127.0.0.1:9")
    response = client.get("/readyz", REMOTE_ADDR="203.0.113.9")
    assert response.status_code == 503
    assert response.json() == {"status": "unavailable"}


@pytest.mark.django_db
def test_readyz_details_follow_the_metrics_rule(client, backend, settings):
    # Through a proxy nobody trusts, a loopback peer is not an internal caller...
    proxied = client.get("/readyz", HTTP_X_FORWARDED_FOR="10.1.2.3")
    assert proxied.json() == {"status": "ok"}
    # ...the metrics token opens the details from anywhere...
    settings.METRICS_TOKEN = "scrape-secret"
    with_token = client.get("/readyz", REMOTE_ADDR="203.0.113.9", HTTP_AUTHORIZATION="Bearer scrape-secret")
    assert with_token.json()["checks"]["backends"] == {"sim-a": "ok"}
    # ...and behind a trusted balancer, an internal caller is told which check failed.
    settings.METRICS_TOKEN = ""
    settings.TRUSTED_PROXIES = "1"
    internal = client.get("/readyz", REMOTE_ADDR="10.0.0.2", HTTP_X_FORWARDED_FOR="10.1.2.3")
    assert internal.json()["checks"]["database"] == "ok"
    public = client.get("/readyz", REMOTE_ADDR="10.0.0.2", HTTP_X_FORWARDED_FOR="10.1.2.3, 203.0.113.9")
    assert public.json() == {"status": "ok"}


@pytest.mark.django_db(transaction=True)
async def test_readyz_calls_within_a_second_probe_the_backends_once(async_client, counting_backend):
    answers = await asyncio.gather(*(async_client.get("/readyz") for _ in range(20)))
    answers += [await async_client.get("/readyz") for _ in range(5)]
    assert {a.status_code for a in answers} == {200}
    assert counting_backend.probes == 1


@pytest.mark.django_db(transaction=True)
async def test_readyz_without_its_cache_probes_on_every_call(async_client, counting_backend, monkeypatch):
    from portal.views import readiness

    monkeypatch.setattr(readiness, "ttl_s", 0.0)
    for _ in range(3):
        assert (await async_client.get("/readyz")).status_code == 200
    assert counting_backend.probes == 3
