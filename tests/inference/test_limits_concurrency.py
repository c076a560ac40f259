"""Limits stay exact under concurrency and across workers: 64 concurrent clients against three uvicorn workers
sharing one real Redis (a private redis-server), with the portal in its production shape.

- admitted tokens in a minute window never exceed the limit plus one request's reservation;
- a monthly budget is never overshot by more than one request;
- concurrency slots come back when clients hang up, and when the workers holding them are killed.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import time

import httpx
import pytest

from tests.conftest import wait_for
from tests.fakes.vllm import run_simulator
from tests.services import portal_processes, private_redis

MODEL = "mistralai/Mistral-7B-Instruct-v0.3"
MAX_TOKENS = 20
CLIENTS = 64

# Each tenant on the Internal plan (limits far above this load) with one limit lowered: only that one decides.
SETUP = """
import json
from billing import services
from billing.models import Plan
from tenants.services import api_key_create, tenant_create
keys = {}
for name, limits in [("Rate Co", {"tpm_limit": 3000}), ("Budget Co", {"monthly_token_budget": 2000}),
                     ("Slots Co", {"max_concurrent": 4})]:
    tenant = tenant_create(name=name)
    services.tenant_quota_set(tenant=tenant, plan=Plan.objects.get(slug="internal"), **limits)
    keys[name] = api_key_create(tenant=tenant, name="load").plaintext
print(json.dumps(keys))
"""


@pytest.fixture(scope="module")
def fleet(tmp_path_factory):
    var_dir = tmp_path_factory.mktemp("limits-var")
    with private_redis() as redis_server, run_simulator(tpot_ms=2) as sim, portal_processes(
        database_url=f"sqlite:///{var_dir / 'db.sqlite3'}", redis_url=redis_server.url,
        backends=f"sim={sim.base_url}", var_dir=var_dir, workers=3,
        extra_env={"INFERENCE_LIMITS_SLOT_TTL_S": "3"},
    ) as portal:
        keys = json.loads(portal.manage("shell", "-c", SETUP).strip().splitlines()[-1])
        time.sleep(1)  # past every worker's key cache
        yield portal, keys, sim


async def _hammer(base_url: str, key: str, seconds: float) -> list[tuple[int, int, str]]:
    """(status, billed tokens, error code) of every request 64 clients made in ``seconds``."""
    results: list[tuple[int, int, str]] = []
    deadline = time.monotonic() + seconds
    limits = httpx.Limits(max_connections=CLIENTS, max_keepalive_connections=CLIENTS)
    async with httpx.AsyncClient(timeout=30, limits=limits) as client:

        async def one_client(n: int) -> None:
            i = 0
            while time.monotonic() < deadline:
                i += 1
                response = await client.post(
                    f"{base_url}/v1/chat/completions", headers={"Authorization": f"Bearer {key}"},
                    json={"model": MODEL, "messages": [{"role": "user", "content": f"client {n} asks {i}"}],
                          "max_tokens": MAX_TOKENS},
                )
                body = response.json()
                if response.status_code == 200:
                    results.append((200, body["usage"]["total_tokens"], ""))
                else:
                    results.append((response.status_code, 0, body["error"]["code"]))
                    await asyncio.sleep(0.05)

        await asyncio.gather(*(one_client(n) for n in range(CLIENTS)))
    return results


def _largest_reservation() -> int:
    # What the gateway reserves: the prompt's byte-length bound plus max_tokens (see inference.gateway.limits).
    prompt = "client 63 asks 99999"
    return len(prompt.encode()) + 4 + 2 + MAX_TOKENS


def test_tokens_per_minute_hold_across_workers(fleet):
    portal, keys, _sim = fleet
    while time.time() % 60 > 30:  # run inside one minute window
        time.sleep(0.5)
    window = int(time.time() // 60)
    results = asyncio.run(_hammer(portal.base_url, keys["Rate Co"], seconds=12))
    assert int(time.time() // 60) == window
    admitted = sum(tokens for status, tokens, _ in results if status == 200)
    refused = [code for status, _, code in results if status == 429]
    assert refused and set(refused) == {"rate_limit_exceeded"}
    assert admitted <= 3000 + _largest_reservation()
    assert admitted >= 1500  # refunds of unused reservations let the window fill up
    assert not [r for r in results if r[0] not in (200, 429)]


def test_monthly_budget_is_never_overshot_by_more_than_one_request(fleet):
    portal, keys, _sim = fleet
    results = asyncio.run(_hammer(portal.base_url, keys["Budget Co"], seconds=6))
    used = sum(tokens for status, tokens, _ in results if status == 200)
    assert {code for status, _, code in results if status == 429} == {"insufficient_quota"}
    assert used <= 2000 + _largest_reservation()
    assert used >= 2000 - 2 * _largest_reservation()


async def _open_streams(base_url: str, key: str, n: int):
    clients, streams = [], []
    for _ in range(n):
        client = httpx.AsyncClient(timeout=30)
        request = client.build_request(
            "POST", f"{base_url}/v1/chat/completions", headers={"Authorization": f"Bearer {key}"},
            # The simulator echoes "/echo …" token by token: at 100 ms a token this stream lasts half a minute.
            json={"model": MODEL, "messages": [{"role": "user", "content": "/echo " + "word " * 300}],
                  "stream": True},
        )
        response = await client.send(request, stream=True)
        assert response.status_code == 200
        lines = response.aiter_lines()
        await lines.__anext__()  # the first event: the stream is under way
        clients.append(client)
        # Keep the line iterator referenced: collecting it would close the stream (a client hanging up).
        streams.append((response, lines))
    return clients, streams


async def _status(base_url: str, key: str) -> int:
    async with httpx.AsyncClient(timeout=30) as client:
        response = await client.post(
            f"{base_url}/v1/chat/completions", headers={"Authorization": f"Bearer {key}"},
            json={"model": MODEL, "messages": [{"role": "user", "content": "Hi"}], "max_tokens": 2},
        )
        return response.status_code


def test_slots_of_abandoned_and_killed_requests_come_back(fleet):
    portal, keys, sim = fleet
    key = keys["Slots Co"]
    httpx.post(f"{sim.base_url}/sim/control", json={"tpot_ms": 100}).raise_for_status()
    try:

        async def scenario():
            clients, streams = await _open_streams(portal.base_url, key, 4)
            assert await _status(portal.base_url, key) == 429  # all four slots taken
            # Two clients hang up: their slots are released as the gateway notices.
            for client, (stream, _lines) in zip(clients[:2], streams[:2], strict=True):
                await stream.aclose()
                await client.aclose()
            deadline = time.monotonic() + 5
            while await _status(portal.base_url, key) != 200:
                assert time.monotonic() < deadline, "slots of disconnected clients did not come back"
                await asyncio.sleep(0.1)
            return clients[2:], streams[2:]

        survivors, _held_streams = asyncio.run(scenario())  # held: dropping them would hang up
        # Kill every worker: the requests holding the remaining slots die with them.
        for pid in portal.worker_pids():
            os.kill(pid, signal.SIGKILL)
        for client in survivors:
            asyncio.run(client.aclose())
        killed_at = time.monotonic()

        def serving_again() -> bool:
            try:
                return httpx.get(f"{portal.base_url}/healthz", timeout=1).status_code == 200
            except httpx.HTTPError:
                return False

        wait_for(serving_again, timeout=30, interval=0.2)  # uvicorn's supervisor starts new workers

        async def four_admitted() -> bool:
            clients, _ = await _open_streams(portal.base_url, key, 4)
            for client in clients:
                await client.aclose()
            return True

        # The dead workers' slots expire (INFERENCE_LIMITS_SLOT_TTL_S=3 here): all four are free again.
        time.sleep(max(0.0, 3.5 - (time.monotonic() - killed_at)))
        assert asyncio.run(four_admitted())
    finally:
        httpx.post(f"{sim.base_url}/sim/control", json={"tpot_ms": 2}).raise_for_status()
