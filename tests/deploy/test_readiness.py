"""The web pod's readiness probe reads /readyz: ready with the database and Redis up, whether or not a model
is awake (a model scaled to zero must not take the web tier, and so the way to wake it, out of service)."""

from __future__ import annotations

import json
import socket
import subprocess
import sys

import pytest

from deploy import checks, readiness


def body(database="ok", redis="ok", backends=None):
    return json.dumps({"status": "not ready", "checks": {"database": database, "redis": redis,
                                                         "backends": backends or {}}}).encode()


def test_ready_when_readyz_is():
    assert readiness.ready(200, b'{"status": "ok"}')


def test_ready_with_every_model_asleep():
    assert readiness.ready(503, body(backends={"syd-7b": "unhealthy", "syd-large": "unhealthy"}))
    assert readiness.ready(503, body(backends={}))


@pytest.mark.parametrize(("status", "payload"), [
    (503, body(database="error: OperationalError")),
    (503, body(redis="error: ConnectionError")),
    (503, b'{"status": "unavailable"}'),  # the verdict without details: not an internal caller
    (503, b"not json"),
    (500, b"[]"),
])
def test_not_ready_when_the_pod_itself_cannot_serve(status, payload):
    assert not readiness.ready(status, payload)


def test_probe_fails_when_nothing_listens(monkeypatch):
    with socket.socket() as sock:  # a port that was free a moment ago and has no listener now
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    monkeypatch.setattr(readiness, "URL", f"http://127.0.0.1:{port}/readyz")
    assert readiness.main() == 1


def test_probe_runs_as_a_script():
    """The exec probe's command line: the file runs on its own (the pod has no listener on 8000 here, or one that
    is not ours, so only the exit status's range is asserted)."""
    result = subprocess.run([sys.executable, str(checks.DEPLOY / "readiness.py")], timeout=30, capture_output=True)
    assert result.returncode in (0, 1) and result.stderr == b""


async def test_probe_against_the_real_readyz(monkeypatch):
    """portal.views.readyz with the database and Redis up and no backend reachable: 503, yet ready."""
    from django.test import AsyncClient

    from portal import views

    async def no_backends():
        return {"syd-7b": False}

    monkeypatch.setattr(views, "_probe_backends", no_backends)
    monkeypatch.setattr(views, "_check_database", lambda: None)
    views.readiness.clear()
    response = await AsyncClient().get("/readyz", REMOTE_ADDR="127.0.0.1")
    views.readiness.clear()
    assert response.status_code == 503
    assert readiness.ready(response.status_code, response.content)
