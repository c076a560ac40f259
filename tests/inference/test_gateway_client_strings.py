"""Client-chosen strings stay bounded: an unknown model is refused before its name is recorded anywhere, error
messages echo only a short prefix, metric labels come from known values, and only a well-formed traceparent is
continued."""

from __future__ import annotations

import time

import httpx
import orjson
import pytest
from django.test import override_settings

from billing.models import UsageEvent
from inference.gateway.app import _traceparent
from tests.conftest import ingested, wait_for
from tests.servers import run_portal

MODEL = "mistralai/Mistral-7B-Instruct-v0.3"
REQUEST_ID = "req_0123abcd00000000000000a7"
VALID = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"


@pytest.fixture(scope="module")
def logged_portal(tmp_path_factory):
    path = tmp_path_factory.mktemp("access") / "access.log"
    with override_settings(INFERENCE_ACCESS_LOG=str(path)), run_portal() as server:
        yield server, path


@pytest.mark.django_db(transaction=True)
def test_a_huge_unknown_model_name_is_refused_and_recorded_nowhere(logged_portal, backend, acme, issue_key):
    server, path = logged_portal
    from inference.gateway.app import gateway

    wait_for(lambda: any(b.healthy for b in gateway.pool.backends.values()), timeout=10)
    key = issue_key(acme)
    marker = "a-made-up-model-"
    name = marker + "x" * 3_000_000
    before = httpx.get(f"{server.base_url}/metrics").text
    responses = [
        httpx.post(f"{server.base_url}/v1/chat/completions", headers={"Authorization": f"Bearer {key}"}, timeout=30,
                   json={"model": name, "messages": [{"role": "user", "content": "Hi"}]})
        for _ in range(3)
    ]
    for response in responses:
        assert response.status_code == 404
        error = response.json()["error"]
        assert error["code"] == "model_not_found" and marker in error["message"]
        assert len(response.content) < 1_000
    after = httpx.get(f"{server.base_url}/metrics").text
    assert marker not in after and len(after) - len(before) < 5_000
    assert 'model="unknown",status="404"' in after

    events = ingested(3)
    assert all(event.model == "" and event.status == 404 for event in events)
    assert not UsageEvent.objects.filter(model__contains=marker).exists()
    wait_for(lambda: path.exists() and path.read_bytes().count(b"\n") >= 3, timeout=3)
    time.sleep(0.2)
    log = path.read_bytes()
    assert marker.encode() not in log and len(log) < 10_000
    line = orjson.loads(log.splitlines()[-1])
    assert line["status"] == 404 and line["model"] == ""


@pytest.mark.django_db(transaction=True)
def test_a_wellformed_traceparent_is_continued_and_anything_else_dropped(logged_portal, backend, acme, issue_key):
    server, path = logged_portal
    from inference.gateway.app import gateway

    wait_for(lambda: any(b.healthy for b in gateway.pool.backends.values()), timeout=10)
    key = issue_key(acme)
    body = {"model": MODEL, "messages": [{"role": "user", "content": "Hi"}], "max_tokens": 1}
    sent = {}
    for header in (VALID, "00-" + "z" * 32 + "-" + "1" * 16 + "-01", VALID + "\t\"}", "x" * 60_000):
        response = httpx.post(f"{server.base_url}/v1/chat/completions", json=body, timeout=30,
                              headers={"Authorization": f"Bearer {key}", "traceparent": header})
        assert response.status_code == 200
        sent[response.headers["x-request-id"]] = header
    def logged():
        return {line["request_id"]: line for line in map(orjson.loads, path.read_bytes().splitlines())}

    wait_for(lambda: path.exists() and set(sent) <= set(logged()), timeout=3)
    lines = logged()
    for request_id, header in sent.items():
        traceparent = lines[request_id]["traceparent"]
        assert len(traceparent) == 55
        if header == VALID:
            assert traceparent.startswith("00-0af7651916cd43dd8448eb211c80319c-")
        else:
            assert traceparent.startswith("00-" + request_id[4:])


@pytest.mark.parametrize(
    "header",
    [
        b"00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-0",  # flags too short
        b"00-0AF7651916CD43DD8448EB211C80319C-b7ad6b7169203331-01",  # uppercase
        b"00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01-extra",  # version 00 has no more fields
        b"ff-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01",  # version ff is invalid
        b"00-00000000000000000000000000000000-b7ad6b7169203331-01",  # all-zero trace id
        b"00-0af7651916cd43dd8448eb211c80319c-0000000000000000-01",  # all-zero parent id
        b"00-0af7651916cd43dd8448eb211c80319g-b7ad6b7169203331-01",  # not hex
        b"00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01" + b" " * 300,
        b"",
    ],
)
def test_an_invalid_traceparent_starts_a_trace_of_our_own(header):
    assert _traceparent(header, REQUEST_ID) == "00-0123abcd00000000000000a700000000-00000000000000a7-01"


def test_a_valid_traceparent_keeps_its_trace_and_flags():
    assert _traceparent(VALID.encode(), REQUEST_ID) == "00-0af7651916cd43dd8448eb211c80319c-00000000000000a7-01"
    future = b"01-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-00-more-fields"
    assert _traceparent(future, REQUEST_ID) == "00-0af7651916cd43dd8448eb211c80319c-00000000000000a7-00"
