"""Faults on the data plane: backends dying, scaled to zero, Redis and PostgreSQL restarting.

In every case the number of usage events equals the number of requests served: nothing is lost and
nothing is counted twice.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import threading
import time
from http.server import BaseHTTPRequestHandler, HTTPServer

import httpx
import openai
import pytest

from inference.models import Backend
from inference.services import backends_publish
from tests.conftest import ingested, wait_for
from tests.fakes.vllm import run_simulator
from tests.services import portal_processes, private_postgres, private_redis

MODEL = "mistralai/Mistral-7B-Instruct-v0.3"

pytestmark = pytest.mark.django_db(transaction=True)


def chat(server, key: str, *, stream: bool = False, max_tokens: int = 8, timeout: float = 30):
    return httpx.post(
        f"{server.base_url}/v1/chat/completions",
        headers={"Authorization": f"Bearer {key}"},
        json={"model": MODEL, "messages": [{"role": "user", "content": "Hi"}], "max_tokens": max_tokens,
              "stream": stream},
        timeout=timeout,
    )


def use_backends(*sims) -> None:
    Backend.objects.all().delete()
    for n, sim in enumerate(sims):
        Backend.objects.create(name=f"sim-{n}", base_url=sim.base_url)
    backends_publish()


def wait_until_healthy(names: set[str]) -> None:
    from inference.gateway.app import gateway

    def ready():
        pool = gateway.pool
        return pool is not None and {b.name for b in pool.backends.values() if b.healthy and b.models} == names

    wait_for(ready, timeout=10)


@pytest.fixture
def key(acme, issue_key, unthrottled):
    unthrottled(acme)  # these tests send several requests at once, more than a Trial plan admits
    return issue_key(acme)


def test_backend_killed_mid_stream_ends_with_an_error_frame_and_bills_what_was_delivered(portal_server, key):
    with run_simulator(tpot_ms=30) as sim:
        use_backends(sim)
        wait_until_healthy({"sim-0"})
        received: list[bytes] = []
        with httpx.stream(
            "POST", f"{portal_server.base_url}/v1/chat/completions", headers={"Authorization": f"Bearer {key}"},
            json={"model": MODEL, "messages": [{"role": "user", "content": "Hi"}], "max_tokens": 200, "stream": True},
            timeout=30,
        ) as response:
            for line in response.iter_lines():
                if line.startswith("data: "):
                    received.append(line.encode())
                    if len(received) == 6:
                        sim.process.kill()
    assert received[-1] == b"data: [DONE]"
    assert b'"error"' in received[-2]
    delivered_tokens = len(received) - 2 - 1  # minus the error frame, [DONE] and the role chunk
    [event] = ingested(1)
    assert event.status == 502 and event.error_code == "upstream_stream_error"
    assert event.completion_tokens == delivered_tokens


def test_dead_backend_loses_no_request_traffic_moves_to_the_other(portal_server, key):
    with run_simulator() as first, run_simulator() as second:
        use_backends(first, second)
        wait_until_healthy({"sim-0", "sim-1"})
        statuses = [chat(portal_server, key).status_code for _ in range(4)]
        first.process.kill()
        first.process.wait()
        # The very next request must succeed: a refused connection is retried on the other replica.
        statuses += [chat(portal_server, key).status_code for _ in range(6)]
    assert statuses == [200] * 10
    events = ingested(10)
    assert [e.backend for e in events[4:]] == ["sim-1"] * 6


def test_all_backends_down_is_503_with_retry_after_within_the_hold(portal_server, key, settings):
    settings.INFERENCE_COLD_START_HOLD_S = 1.0
    with run_simulator() as sim:
        use_backends(sim)
        wait_until_healthy({"sim-0"})
        sim.process.kill()
        sim.process.wait()
        started = time.monotonic()
        response = chat(portal_server, key)
        elapsed = time.monotonic() - started
    assert response.status_code == 503
    assert int(response.headers["retry-after"]) > 0
    assert response.json()["error"]["code"] == "service_unavailable"
    assert elapsed < 1.0 + 1.5  # held for the hold time, then answered
    [event] = ingested(1)
    assert event.status == 503


class _WarmupHook(BaseHTTPRequestHandler):
    calls: list[dict] = []

    def do_POST(self):
        length = int(self.headers["content-length"])
        _WarmupHook.calls.append(json.loads(self.rfile.read(length)))
        self.send_response(202)
        self.end_headers()

    def log_message(self, *args):
        pass


@contextlib.contextmanager
def warmup_hook():
    _WarmupHook.calls = []
    server = HTTPServer(("127.0.0.1", 0), _WarmupHook)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_port}/warm", _WarmupHook.calls
    finally:
        server.shutdown()


def test_cold_start_holds_the_request_calls_the_warmup_hook_then_serves_it(portal_server, key, settings):
    settings.INFERENCE_COLD_START_HOLD_S = 20.0
    with warmup_hook() as (hook_url, calls):
        settings.INFERENCE_WARMUP_URL = hook_url
        # The replica is known (its models are listed) but still loading: /health answers 503 for 3 s.
        with run_simulator(startup_delay_s=3) as sim:
            Backend.objects.all().delete()
            Backend.objects.create(name="cold", base_url=sim.base_url, served_models=[MODEL])
            backends_publish()
            from inference.gateway.app import gateway

            wait_for(lambda: "cold" in gateway.pool.backends, timeout=5)
            started = time.monotonic()
            response = chat(portal_server, key)
            held = time.monotonic() - started
    assert response.status_code == 200, response.text
    assert 0.5 < held < 15
    assert calls == [{"model": MODEL, "reason": "request"}]
    [event] = ingested(1)
    assert event.status == 200 and event.backend == "cold"


def test_pending_requests_gauge_counts_held_requests(portal_server, key, settings):
    settings.INFERENCE_COLD_START_HOLD_S = 2.0
    Backend.objects.all().delete()
    Backend.objects.create(name="asleep", base_url="http://127.0.0.1:9", served_models=[MODEL])
    backends_publish()
    from inference.gateway.app import gateway

    wait_for(lambda: "asleep" in gateway.pool.backends, timeout=5)

    async def hold_three():
        async with httpx.AsyncClient(timeout=10) as client:
            requests = [
                client.post(f"{portal_server.base_url}/v1/chat/completions", headers={"Authorization": f"Bearer {key}"},
                            json={"model": MODEL, "messages": [{"role": "user", "content": "Hi"}]})
                for _ in range(3)
            ]
            tasks = [asyncio.ensure_future(r) for r in requests]
            await asyncio.sleep(0.8)
            scrape = await client.get(f"{portal_server.base_url}/metrics")
            responses = await asyncio.gather(*tasks)
            return scrape, responses

    scrape, responses = asyncio.run(hold_three())
    assert f'wattle_pending_requests{{model="{MODEL}"}} 3.0' in scrape.text
    assert [r.status_code for r in responses] == [503] * 3


# --- Redis and PostgreSQL restarts, on private instances and the portal as separate processes ------------
@pytest.fixture(scope="module")
def fault_services(tmp_path_factory):
    with private_postgres() as postgres, private_redis() as redis_server, run_simulator() as sim:
        var_dir = tmp_path_factory.mktemp("fault-var")
        with portal_processes(
            database_url=postgres.url, redis_url=redis_server.url, backends=f"sim={sim.base_url}", var_dir=var_dir,
            # The demo tenant has limits (the Internal plan): with Redis away they are counted per worker, so
            # requests are served (and their usage events spooled) rather than refused by the closed policy.
            extra_env={"INFERENCE_KEY_STALE_OK_S": "300", "INFERENCE_LIMITS_ON_REDIS_ERROR": "open"},
        ) as portal:
            yield postgres, redis_server, portal


def _served_ids(portal, n: int) -> list[str]:
    client = openai.OpenAI(base_url=f"{portal.base_url}/v1", api_key=portal.api_key, max_retries=0)
    ids = []
    for i in range(n):
        response = client.chat.completions.with_raw_response.create(
            model=MODEL, messages=[{"role": "user", "content": f"n{i}"}], max_tokens=4, stream=i % 2 == 1,
        )
        if response.http_response.status_code == 200:
            if i % 2 == 1:
                list(response.parse())
            ids.append(response.headers["x-request-id"])
    return ids


def _stored_ids(postgres) -> set[str]:
    return set(filter(None, postgres.query("SELECT request_id FROM billing_usageevent").split("\n")))


def test_redis_restart_loses_no_usage_event(fault_services):
    postgres, redis_server, portal = fault_services
    before = set(_stored_ids(postgres))
    served = _served_ids(portal, 10)
    redis_server.stop()
    served += _served_ids(portal, 10)  # Redis is down: keys seen recently still authenticate; events spool
    redis_server.start()  # back, empty: the key snapshot is rebuilt from PostgreSQL, the spool replayed
    served += _served_ids(portal, 10)
    assert len(served) == 30
    wait_for(lambda: set(served) <= _stored_ids(postgres), timeout=30, interval=0.5)
    assert _stored_ids(postgres) - before == set(served)


def test_postgres_restart_loses_no_usage_event(fault_services):
    postgres, _redis_server, portal = fault_services
    before = set(_stored_ids(postgres))
    served = _served_ids(portal, 6)
    postgres.stop()
    served += _served_ids(portal, 10)  # the data plane never needs PostgreSQL on the request path
    time.sleep(1.5)  # the ingester fails a few times meanwhile
    postgres.start()
    served += _served_ids(portal, 4)
    assert len(served) == 20
    wait_for(lambda: set(served) <= _stored_ids(postgres), timeout=30, interval=0.5)
    assert _stored_ids(postgres) - before == set(served)
