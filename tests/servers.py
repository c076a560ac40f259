"""Real servers for tests: the portal's ASGI app under uvicorn, in a thread of the test process.

A thread (not a subprocess) so the portal shares the test database connection settings and, in the embedded
shape, the in-process Redis stand-in with the test itself.
"""

from __future__ import annotations

import contextlib
import socket
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass

import uvicorn


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@dataclass
class RunningServer:
    base_url: str
    port: int
    server: uvicorn.Server


@contextlib.contextmanager
def run_portal(app=None) -> Iterator[RunningServer]:
    if app is None:
        from portal.asgi import application as app
    port = free_port()
    config = uvicorn.Config(
        app, host="127.0.0.1", port=port, loop="asyncio", http="httptools", lifespan="on",
        log_level="warning", access_log=False, timeout_graceful_shutdown=3,
        proxy_headers=False,  # as every Wattle command line (core.proxies.UVICORN_ARGS): TRUSTED_PROXIES decides
    )
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, name=f"portal-{port}", daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            raise RuntimeError("the portal did not start")
        time.sleep(0.02)
    try:
        yield RunningServer(base_url=f"http://127.0.0.1:{port}", port=port, server=server)
    finally:
        server.should_exit = True
        thread.join(timeout=15)
