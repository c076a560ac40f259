"""Every request the gateway sends upstream carries its tenant's `cache_salt` (never a client's own), so vLLM
never shares cached prompt prefixes between tenants and one can't time another's prompts.

A recording tap at the network edge, between the gateway and the simulator, keeps every body sent upstream."""

from __future__ import annotations

import contextlib
import hashlib
import hmac
import http.client
import threading
import uuid
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import urlsplit

import httpx
import orjson
import pytest
from django.conf import settings

from inference.models import Backend
from inference.services import backends_publish
from tests.conftest import wait_for

MODEL = "mistralai/Mistral-7B-Instruct-v0.3"
EMBED = "intfloat/e5-mistral-7b-instruct"

pytestmark = pytest.mark.django_db(transaction=True)


@contextlib.contextmanager
def recording_tap(target: str):
    """A plain HTTP/1.1 relay to ``target`` that records the path and body of every POST."""
    upstream = urlsplit(target)
    posted: list[tuple[str, dict]] = []

    class Tap(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def _relay(self) -> None:
            length = int(self.headers.get("content-length") or 0)
            body = self.rfile.read(length) if length else None
            if self.command == "POST":
                posted.append((self.path, orjson.loads(body)))
            connection = http.client.HTTPConnection(upstream.hostname, upstream.port, timeout=30)
            headers = {k: v for k, v in self.headers.items() if k.lower() not in ("host", "connection")}
            connection.request(self.command, self.path, body=body, headers=headers)
            answer = connection.getresponse()
            data = answer.read()
            connection.close()
            self.send_response(answer.status)
            for name, value in answer.getheaders():
                if name.lower() not in ("content-length", "transfer-encoding", "connection", "date", "server"):
                    self.send_header(name, value)
            self.send_header("content-length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        do_GET = do_POST = _relay

        def log_message(self, *args) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Tap)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_port}", posted
    finally:
        server.shutdown()
        server.server_close()


@pytest.fixture
def tapped(portal_server, simulator):
    from inference.gateway.app import gateway

    name = f"tap-{uuid.uuid4().hex[:8]}"  # a new name: the pool may still hold the last test's tap
    with recording_tap(simulator.base_url) as (url, posted):
        Backend.objects.all().delete()
        Backend.objects.create(name=name, base_url=url)
        backends_publish()
        wait_for(lambda: {b.name for b in gateway.pool.backends.values() if b.healthy and b.models} == {name},
                 timeout=10)
        yield portal_server, posted


def expected_salt(tenant) -> str:
    return hmac.digest(settings.INFERENCE_CACHE_SALT_SECRET.encode(), str(tenant.pk).encode(), "sha256")[:16].hex()


def send_each_kind(server, key: str, prompt: str) -> None:
    auth = {"Authorization": f"Bearer {key}"}
    for path, body in (
        ("/v1/chat/completions", {"messages": [{"role": "user", "content": prompt}], "max_tokens": 2}),
        ("/v1/chat/completions", {"messages": [{"role": "user", "content": prompt}], "max_tokens": 2,
                                  "stream": True}),
        ("/v1/chat/completions", {"messages": [{"role": "developer", "content": "Be brief."},  # re-encoded
                                               {"role": "user", "content": prompt}]}),
        ("/v1/completions", {"prompt": [prompt, prompt + "!"], "max_tokens": 2}),
        ("/v1/embeddings", {"input": prompt, "model": EMBED}),
    ):
        response = httpx.post(f"{server.base_url}{path}", headers=auth, json={"model": MODEL, **body}, timeout=30)
        assert response.status_code == 200, response.text


def test_every_upstream_request_carries_its_tenants_salt(tapped, acme, bluegum, issue_key):
    server, posted = tapped
    send_each_kind(server, issue_key(acme), "Hello")
    acme_bodies = list(posted)
    send_each_kind(server, issue_key(bluegum), "Hello")
    bluegum_bodies = posted[len(acme_bodies):]
    assert len(acme_bodies) == len(bluegum_bodies) == 5
    assert {body["cache_salt"] for _path, body in acme_bodies} == {expected_salt(acme)}
    assert {body["cache_salt"] for _path, body in bluegum_bodies} == {expected_salt(bluegum)}
    assert expected_salt(acme) != expected_salt(bluegum)
    # Not something a tenant could work out from what it knows (its own id) without the server's secret.
    assert expected_salt(acme) not in (str(acme.pk), hashlib.sha256(str(acme.pk).encode()).hexdigest()[:32])
    # The cap reserved for a chat without max_tokens went along with it.
    [developer] = [body for path, body in acme_bodies if "chat" in path and body["messages"][0]["role"] == "system"]
    assert developer["max_tokens"] == settings.INFERENCE_DEFAULT_COMPLETION_RESERVE


def test_one_tenants_cached_prompt_is_never_a_hit_for_another(tapped, acme, bluegum, issue_key, simulator):
    server, _posted = tapped
    prompt = f"Our refund policy, in full: {uuid.uuid4()}"

    def ask(key: str) -> int:
        before = simulator.state()["counters"]["prefix_cache_hits"]
        response = httpx.post(f"{server.base_url}/v1/chat/completions", headers={"Authorization": f"Bearer {key}"},
                              json={"model": MODEL, "messages": [{"role": "user", "content": prompt}],
                                    "max_tokens": 2}, timeout=30)
        assert response.status_code == 200, response.text
        return simulator.state()["counters"]["prefix_cache_hits"] - before

    alice_key, bob_key = issue_key(acme), issue_key(bluegum)
    assert ask(alice_key) == 0  # first sight
    assert ask(alice_key) > 0  # Acme's own prompt, cached for Acme
    assert ask(bob_key) == 0  # Bluegum's identical prompt finds nothing of Acme's
    assert ask(issue_key(acme, name="another key")) > 0  # the salt is the tenant's, not the key's
