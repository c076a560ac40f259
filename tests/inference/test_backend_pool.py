"""Routing rules of the backend pool, on its state alone."""

from __future__ import annotations

import time

from inference.gateway.backends import BackendPool, BackendState, _parse_queue_waiting

MODEL = "m"


def pool_with(*states: BackendState) -> BackendPool:
    pool = BackendPool(redis=None, session=None)
    pool.backends = {s.name: s for s in states}
    return pool


def replica(name: str, **fields) -> BackendState:
    state = BackendState(name=name, url=f"http://{name}", api_key="", region=fields.pop("region", "ap-southeast-2"),
                         configured_models=(MODEL,))
    state.healthy = True
    for field_name, value in fields.items():
        setattr(state, field_name, value)
    return state


def test_least_outstanding_and_shortest_queue_first():
    pool = pool_with(replica("busy", outstanding=5), replica("idle"), replica("queued", queue_waiting=3))
    assert [b.name for b in pool.candidates(MODEL)] == ["idle", "queued", "busy"]


def test_weight_scales_the_load():
    pool = pool_with(replica("big", outstanding=3, weight=400), replica("small", outstanding=1, weight=100))
    assert pool.candidates(MODEL)[0].name == "big"


def test_never_routes_outside_the_allowed_regions():
    pool = pool_with(replica("virginia", region="us-east-1"), replica("melbourne", region="ap-southeast-4"))
    assert [b.name for b in pool.candidates(MODEL)] == ["melbourne"]


def test_unhealthy_draining_disabled_full_and_excluded_replicas_are_skipped():
    pool = pool_with(
        replica("sick", healthy=False), replica("draining", draining=True), replica("off", enabled=False),
        replica("full", outstanding=2, max_concurrency=2), replica("tried"), replica("ok"),
    )
    assert [b.name for b in pool.candidates(MODEL, exclude={"tried"})] == ["ok"]
    assert pool.candidates("other-model") == []


def test_breaker_opens_after_repeated_failures_and_closes_on_success():
    backend = replica("flaky")
    pool = pool_with(backend)
    backend.record_failure("ConnectionRefused")
    backend.record_failure("ConnectionRefused")
    assert pool.candidates(MODEL)  # two failures: still chosen
    backend.record_failure("ConnectionRefused")
    assert pool.candidates(MODEL) == []  # open
    assert backend.open_until > time.monotonic()
    backend.record_success()
    assert pool.candidates(MODEL) == [backend]


def test_models_and_context_length_come_from_discovery_unless_configured():
    discovered = replica("d")
    discovered.configured_models = ()
    discovered.discovered_models = ("a", "b")
    discovered.max_model_len = {"a": 8192}
    pool = pool_with(discovered)
    assert pool.known_models() == {"a", "b"}
    assert pool.max_model_len("a") == 8192
    assert pool.max_model_len("b") == 32768  # INFERENCE_DEFAULT_MAX_MODEL_LEN


def test_queue_depth_is_read_from_vllm_metrics():
    text = (
        "# HELP vllm:num_requests_waiting Number of requests waiting to be processed.\n"
        "# TYPE vllm:num_requests_waiting gauge\n"
        'vllm:num_requests_waiting{engine="0",model_name="a"} 3.0\n'
        'vllm:num_requests_waiting{engine="0",model_name="b"} 2.0\n'
        'vllm:num_requests_running{engine="0",model_name="a"} 7.0\n'
    )
    assert _parse_queue_waiting(text) == 5.0
