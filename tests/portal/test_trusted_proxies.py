"""One rule for the client's address (TRUSTED_PROXIES): the login throttle, the audit trail, the /metrics guard
and the uvicorn command lines all follow it. Behind a load balancer, clients are told apart by the address the
balancer vouches for; with no proxy trusted, X-Forwarded-For is ignored, so a spoofed header changes nothing."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import httpx
import pytest

from audit.models import AuditEntry
from core.proxies import parse_trusted_proxies
from inference.gateway import metrics
from tests.conftest import wait_for
from tests.servers import free_port

ROOT = Path(__file__).resolve().parents[2]
BALANCER = "10.0.0.2"  # every connection arrives from the load balancer


def _failed_login(client, *, forwarded_for: str | None, n: int) -> str:
    """A wrong password for a new address each time, so only the per-client-IP limit can trip."""
    extra = {"REMOTE_ADDR": BALANCER}
    if forwarded_for is not None:
        extra["HTTP_X_FORWARDED_FOR"] = forwarded_for
    response = client.post("/accounts/login/", {"login": f"nobody{n}@example.com", "password": "wrong"}, **extra)
    return response.content.decode()


def _throttled(page: str) -> bool:
    return "Too many failed login attempts" in page


@pytest.mark.django_db
def test_behind_a_trusted_balancer_two_clients_are_throttled_apart(client, settings):
    settings.TRUSTED_PROXIES = "1"
    for n in range(10):
        assert not _throttled(_failed_login(client, forwarded_for="198.51.100.7", n=n))
    assert _throttled(_failed_login(client, forwarded_for="198.51.100.7", n=10))
    # Another client behind the same balancer is not locked out by the first one's failures.
    assert not _throttled(_failed_login(client, forwarded_for="198.51.100.8", n=11))
    ips = set(AuditEntry.objects.filter(action="auth.login_failed").values_list("ip", flat=True))
    assert ips == {"198.51.100.7", "198.51.100.8"}


@pytest.mark.django_db
def test_a_client_cannot_prepend_its_way_past_a_trusted_balancer(client, settings):
    settings.TRUSTED_PROXIES = "1"
    # The balancer appends the real peer; whatever the client wrote before it is not believed.
    for n in range(10):
        _failed_login(client, forwarded_for=f"203.0.113.{n}, 198.51.100.7", n=n)
    assert _throttled(_failed_login(client, forwarded_for="203.0.113.99, 198.51.100.7", n=10))
    assert set(AuditEntry.objects.values_list("ip", flat=True)) == {"198.51.100.7"}


@pytest.mark.django_db
def test_without_trusted_proxies_a_spoofed_header_dodges_nothing(client, settings):
    settings.TRUSTED_PROXIES = ""
    for n in range(10):
        assert not _throttled(_failed_login(client, forwarded_for=f"203.0.113.{n}", n=n))
    assert _throttled(_failed_login(client, forwarded_for="203.0.113.200", n=10))
    assert set(AuditEntry.objects.filter(action="auth.login_failed").values_list("ip", flat=True)) == {BALANCER}


@pytest.mark.django_db
def test_trusted_networks_walk_the_header_past_our_own_proxies(client, settings):
    settings.TRUSTED_PROXIES = "10.0.0.0/8"
    _failed_login(client, forwarded_for="192.0.2.1, 198.51.100.7, 10.0.0.9", n=0)
    assert AuditEntry.objects.get().ip == "198.51.100.7"  # 10.0.0.9 is ours; 192.0.2.1 was the client's own text


@pytest.mark.parametrize(
    ("raw", "peer", "forwarded_for", "expected"),
    [
        ("", "10.0.0.2", "198.51.100.7", ("10.0.0.2", False)),
        ("", "10.0.0.2", None, ("10.0.0.2", True)),
        ("1", "10.0.0.2", "198.51.100.7", ("198.51.100.7", True)),
        ("1", "10.0.0.2", "203.0.113.1, 198.51.100.7", ("198.51.100.7", True)),
        ("2", "10.0.0.2", "198.51.100.7, 10.0.0.3", ("198.51.100.7", True)),
        ("2", "10.0.0.2", "198.51.100.7", ("10.0.0.2", False)),  # fewer hops than we trust: the peer
        ("1", "10.0.0.2", "not-an-address", ("10.0.0.2", False)),
        ("1", "10.0.0.2", "[2001:db8::7]:4431", ("2001:db8::7", True)),
        ("1", "10.0.0.2", "198.51.100.7:55123", ("198.51.100.7", True)),
        ("10.0.0.0/8", "203.0.113.5", "198.51.100.7", ("203.0.113.5", False)),  # the peer is not our proxy
        ("10.0.0.0/8", "10.0.0.2", "198.51.100.7, 10.9.9.9", ("198.51.100.7", True)),
        ("10.0.0.0/8", "10.0.0.2", "10.1.1.1", ("10.1.1.1", True)),
        ("10.0.0.0/8,192.168.1.7", "::ffff:192.168.1.7", "198.51.100.7", ("198.51.100.7", True)),
    ],
)
def test_resolution_rule(raw, peer, forwarded_for, expected):
    address, vouched = parse_trusted_proxies(raw).resolve(peer, forwarded_for)
    assert (str(address), vouched) == expected


@pytest.mark.parametrize("raw", ["one", "10.0.0.0/33", "1,10.0.0.0/8", "-1"])
def test_a_bad_trusted_proxies_value_stops_the_process(raw):
    result = subprocess.run(
        [sys.executable, "-c", "import portal.settings"], cwd=ROOT, capture_output=True, text=True, timeout=60,
        env={"PATH": os.environ["PATH"], "WATTLE_VAR_DIR": str(ROOT / "var" / "test"), "DEBUG": "true",
             "TRUSTED_PROXIES": raw},
    )
    assert result.returncode != 0
    assert "ImproperlyConfigured" in result.stderr and "TRUSTED_PROXIES" in result.stderr


@pytest.mark.parametrize(
    ("environ", "expected"),
    [({}, "None"), ({"TRUSTED_PROXIES": "1"}, "('HTTP_X_FORWARDED_PROTO', 'https')"),
     ({"TRUSTED_PROXIES": "1", "TRUST_X_FORWARDED_PROTO": "false"}, "None")],
)
def test_behind_trusted_proxies_their_x_forwarded_proto_is_believed_by_default(environ, expected):
    result = subprocess.run(
        [sys.executable, "-c", "import portal.settings as s; print(getattr(s, 'SECURE_PROXY_SSL_HEADER', None))"],
        cwd=ROOT, capture_output=True, text=True, timeout=60,
        env={"PATH": os.environ["PATH"], "WATTLE_VAR_DIR": str(ROOT / "var" / "test"), "DEBUG": "true", **environ},
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == expected


@pytest.mark.parametrize(
    ("trusted", "client", "headers", "allowed"),
    [
        ("1", ("10.0.0.2", 5000), {b"x-forwarded-for": b"203.0.113.9"}, False),  # public, via the balancer
        ("1", ("10.0.0.2", 5000), {b"x-forwarded-for": b"10.1.2.3"}, True),  # internal, via the balancer
        ("1", ("10.0.0.2", 5000), {b"x-forwarded-for": b"10.1.2.3, 203.0.113.9"}, False),  # forged prefix
        ("1", ("10.1.2.3", 5000), {}, True),  # a direct scrape inside the cluster
        ("10.0.0.0/8", ("10.0.0.2", 5000), {b"x-forwarded-for": b"10.1.2.3, 203.0.113.9"}, False),
        ("10.0.0.0/8", ("203.0.113.9", 5000), {b"x-forwarded-for": b"10.1.2.3"}, False),
        ("1", ("10.0.0.2", 5000), {b"x-forwarded-for": b"10.1.2.3", b"forwarded": b"for=10.1.2.3"}, False),
    ],
)
def test_metrics_guard_follows_trusted_proxies(settings, trusted, client, headers, allowed):
    settings.TRUSTED_PROXIES = trusted
    assert metrics.scrape_allowed({"client": client}, headers) is allowed


def _devserver_command(port: int) -> list[str]:
    from portal.management.commands.devserver import portal_command

    return portal_command(port)


def _bench_command(port: int) -> list[str]:
    from bench.environment import gateway_command

    return gateway_command("uvicorn", port, 1)


@pytest.mark.parametrize("command", [_devserver_command, _bench_command], ids=["devserver", "bench"])
def test_our_uvicorn_command_lines_leave_forwarded_headers_to_trusted_proxies(tmp_path, command):
    """uvicorn rewrites the client from X-Forwarded-For by default (trusting 127.0.0.1): a second rule. Here a
    proxy on loopback is trusted and forwards an internal caller, which only our rule lets read /metrics."""
    port = free_port()
    env = {
        "PATH": os.environ["PATH"], "DEBUG": "true", "WATTLE_VAR_DIR": str(tmp_path),
        "INFERENCE_PUBLISH_ON_START": "false", "USAGE_INGEST_IN_PROCESS": "false", "INFERENCE_ACCESS_LOG": "off",
        "TRUSTED_PROXIES": "127.0.0.0/8",
    }
    process = subprocess.Popen(command(port), cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        base = f"http://127.0.0.1:{port}"

        def up():
            try:
                return httpx.get(f"{base}/healthz", timeout=1).status_code == 200
            except httpx.TransportError:
                assert process.poll() is None, process.stderr.read().decode()
                return False

        wait_for(up, timeout=60, interval=0.1)
        assert httpx.get(f"{base}/metrics", headers={"X-Forwarded-For": "10.1.2.3"}).status_code == 200
        assert httpx.get(f"{base}/metrics", headers={"X-Forwarded-For": "203.0.113.9"}).status_code == 403
    finally:
        process.terminate()
        process.wait(timeout=15)
