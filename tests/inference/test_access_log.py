"""The access log: one JSON line per /v1 request with what operations need, and never prompt or reply text."""

from __future__ import annotations

import time

import httpx
import orjson
import pytest
from django.test import override_settings

from tests.conftest import wait_for
from tests.servers import run_portal

MODEL = "mistralai/Mistral-7B-Instruct-v0.3"
SECRET_PROMPT = "my TFN is 123 456 782 and my card 4111 1111 1111 1111"

pytestmark = pytest.mark.django_db(transaction=True)


@pytest.fixture(scope="module")
def logged_portal(tmp_path_factory):
    path = tmp_path_factory.mktemp("access") / "access.log"
    with override_settings(INFERENCE_ACCESS_LOG=str(path)), run_portal() as server:
        yield server, path


def test_one_line_per_request_with_ids_and_no_content(logged_portal, backend, acme, issue_key):
    server, path = logged_portal
    from inference.gateway.app import gateway

    wait_for(lambda: any(b.healthy for b in gateway.pool.backends.values()), timeout=10)
    key = issue_key(acme)
    ok = httpx.post(f"{server.base_url}/v1/chat/completions", headers={"Authorization": f"Bearer {key}"},
                    json={"model": MODEL, "messages": [{"role": "user", "content": f"/echo {SECRET_PROMPT}"}]})
    bad = httpx.post(f"{server.base_url}/v1/chat/completions", headers={"Authorization": "Bearer nope"},
                     json={"model": MODEL, "messages": [{"role": "user", "content": SECRET_PROMPT}]})
    assert ok.status_code == 200 and SECRET_PROMPT in ok.text  # the reply carried it...
    assert bad.status_code == 401

    def lines():
        return [orjson.loads(x) for x in path.read_bytes().splitlines()] if path.exists() else []

    wait_for(lambda: len(lines()) >= 2, timeout=3)
    time.sleep(0.2)
    text = path.read_text()
    assert "123 456 782" not in text and "4111" not in text  # ...the log never does
    by_id = {line["request_id"]: line for line in lines()}
    good = by_id[ok.headers["x-request-id"]]
    assert good["status"] == 200 and good["model"] == MODEL and good["backend"] == "sim-a"
    assert good["tenant"] == str(acme.pk) and good["key_id"] == key.split("_")[1]
    assert good["prompt_tokens"] > 0 and good["duration_ms"] > 0 and good["traceparent"].startswith("00-")
    refused = by_id[bad.headers["x-request-id"]]
    assert refused["status"] == 401 and refused["tenant"] is None
