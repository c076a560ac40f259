"""The staff backends page shows the state the data plane routes by: the record each gateway worker writes after
its probes (health, circuit, queue, models with their context length, when it last probed), not a second
prober's opinion, and the probe interval from the setting."""

from __future__ import annotations

import orjson
import pytest
from django.conf import settings

from core import contract
from core.redis import get_redis
from inference.gateway.backends import BackendPool, BackendState
from inference.models import Backend
from tests.conftest import wait_for


def recorded(name: str) -> dict | None:
    raw = get_redis().get(contract.backend_health_key(name))
    return orjson.loads(raw) if raw else None


def test_page_shows_what_the_gateway_sees_of_the_simulator(gateway_ready, staff_client):
    record = wait_for(lambda: (r := recorded("sim-a")) and r["source"] == "gateway" and r["healthy"] and r)
    assert record["models"] and record["circuit"] == "closed" and record["checked_at"]
    model = record["models"][0]
    body = staff_client.get("/staff/backends/").content.decode()
    assert "healthy" in body and "circuit closed" in body and "Probed" in body
    assert f"<code>{model}</code>" in body
    assert f"{record['max_model_len'][model]:,} tokens" in body  # context length from the probe of /v1/models
    assert "not probed yet" not in body.lower() and "discovered" not in body
    assert f"every {settings.INFERENCE_PROBE_INTERVAL_S:g} seconds" in body
    assert "15 seconds" not in body
    edit = staff_client.get("/staff/backends/sim-a/").content.decode()
    assert "healthy" in edit and f"<code>{model}</code>" in edit


def test_open_circuit_and_queue_are_shown(staff_client, db, settings):
    Backend.objects.create(name="flaky", base_url="http://10.0.0.7:8000", served_models=["m"])
    state = BackendState(name="flaky", url="http://10.0.0.7:8000", api_key="", region="ap-southeast-2",
                         configured_models=("m",))
    state.healthy, state.queue_waiting, state.outstanding, state.last_probe_at = True, 4.0, 2, 1.0
    for _ in range(3):
        state.record_failure("ServerDisconnectedError")
    record = BackendPool(redis=None, session=None).health_record(state)
    get_redis().set(contract.backend_health_key("flaky"), orjson.dumps(record))
    body = staff_client.get("/staff/backends/").content.decode()
    assert "circuit open" in body and "ServerDisconnectedError" in body
    assert "4 waiting, 2 in flight" in body
    assert "stale" in body  # probed at 1970: not current


def test_control_plane_probe_never_overwrites_the_gateways_record(db, simulator):
    from inference import tasks

    Backend.objects.create(name="sim", base_url=simulator.base_url)
    get_redis().set(contract.backend_health_key("sim"), orjson.dumps({"source": "gateway", "healthy": False}))
    tasks.probe_backends()
    assert recorded("sim") == {"source": "gateway", "healthy": False}
    get_redis().delete(contract.backend_health_key("sim"))
    tasks.probe_backends()  # no worker has reported: the control plane's probe fills in
    assert recorded("sim")["source"] == "control plane" and recorded("sim")["healthy"] is True


def test_no_record_says_so(staff_client, db):
    Backend.objects.create(name="quiet", base_url="http://10.0.0.8:8000")
    body = staff_client.get("/staff/backends/").content.decode()
    assert "No probe recorded" in body


@pytest.mark.parametrize("who", ["anonymous", "tenant owner"])
def test_only_staff_see_the_page(client, owner_client, who):
    response = (client if who == "anonymous" else owner_client).get("/staff/backends/")
    assert response.status_code in (302, 403, 404)
    assert b"Live state" not in response.content


def test_redis_away_does_not_stop_the_probe_loop(caplog):
    """Recording is best effort: a Redis error is a warning, never an exception out of the probe loop."""
    import asyncio

    from redis.exceptions import ConnectionError as RedisConnectionError

    class Away:
        def pipeline(self, **_kwargs):
            raise RedisConnectionError("down")

    pool = BackendPool(redis=Away(), session=None)
    pool.backends = {"b": BackendState(name="b", url="http://b", api_key="", region="ap-southeast-2",
                                       configured_models=("m",))}
    asyncio.run(pool.publish_health())
    assert "backend health not recorded: ConnectionError" in caplog.text
