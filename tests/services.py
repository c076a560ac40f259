"""Private, real service instances for fault tests: a redis-server and a PostgreSQL cluster that a test may
stop and start without disturbing the shared ones, and the portal as a separate process, as in production."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from core.proxies import UVICORN_ARGS
from tests.servers import free_port

ROOT = Path(__file__).resolve().parents[1]


def _wait_port(port: int, timeout: float = 20.0, up: bool = True) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with socket.socket() as sock:
            sock.settimeout(0.2)
            open_ = sock.connect_ex(("127.0.0.1", port)) == 0
        if open_ == up:
            return
        time.sleep(0.05)
    raise RuntimeError(f"port {port} did not {'open' if up else 'close'} within {timeout}s")


@dataclass
class PrivateRedis:
    port: int = field(default_factory=free_port)
    process: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        self.process = subprocess.Popen(
            ["redis-server", "--port", str(self.port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )
        _wait_port(self.port)

    def stop(self) -> None:
        """A crash, not a shutdown: nothing is saved (the real service runs without persistence too)."""
        if self.process and self.process.poll() is None:
            self.process.kill()
            self.process.wait(5)
        _wait_port(self.port, up=False)


@contextlib.contextmanager
def private_redis() -> Iterator[PrivateRedis]:
    server = PrivateRedis()
    server.start()
    try:
        yield server
    finally:
        server.stop()


def _pg_bin(name: str) -> str:
    found = sorted(Path("/usr/lib/postgresql").glob(f"*/bin/{name}"))
    if not found:
        raise RuntimeError(f"PostgreSQL's {name} is not installed")
    return str(found[-1])


@dataclass
class PrivatePostgres:
    directory: Path
    port: int = field(default_factory=free_port)

    @property
    def url(self) -> str:
        return f"postgres://postgres@127.0.0.1:{self.port}/wattle"

    def _as_postgres(self, *args: str) -> list[str]:
        # PostgreSQL refuses to run as root; the machine's postgres account runs it.
        return ["runuser", "-u", "postgres", "--", *args] if os.geteuid() == 0 else list(args)

    def init(self) -> None:
        self.directory.mkdir(parents=True, exist_ok=True)
        if os.geteuid() == 0:
            shutil.chown(self.directory, "postgres", "postgres")
        subprocess.run(
            self._as_postgres(_pg_bin("initdb"), "-D", str(self.directory / "data"), "-A", "trust", "-U", "postgres"),
            check=True, capture_output=True, timeout=120,
        )

    def start(self) -> None:
        subprocess.run(
            self._as_postgres(
                _pg_bin("pg_ctl"), "-D", str(self.directory / "data"), "-l", str(self.directory / "log"), "-w",
                "-o", f"-p {self.port} -c listen_addresses=127.0.0.1 -k {self.directory} -c fsync=off",
                "start",
            ),
            check=True, capture_output=True, timeout=60,
        )

    def stop(self) -> None:
        subprocess.run(
            self._as_postgres(_pg_bin("pg_ctl"), "-D", str(self.directory / "data"), "-m", "immediate", "-w", "stop"),
            check=True, capture_output=True, timeout=60,
        )
        _wait_port(self.port, up=False)

    def create_database(self) -> None:
        subprocess.run(
            ["psql", "-h", "127.0.0.1", "-p", str(self.port), "-U", "postgres", "-c", "CREATE DATABASE wattle"],
            check=True, capture_output=True, timeout=30,
        )

    def query(self, sql: str) -> str:
        result = subprocess.run(
            ["psql", "-h", "127.0.0.1", "-p", str(self.port), "-U", "postgres", "-d", "wattle", "-tAc", sql],
            check=True, capture_output=True, text=True, timeout=30,
        )
        return result.stdout.strip()


@contextlib.contextmanager
def private_postgres() -> Iterator[PrivatePostgres]:
    directory = Path(tempfile.mkdtemp(prefix="wattle-pg-"))
    server = PrivatePostgres(directory=directory)
    server.init()
    server.start()
    server.create_database()
    try:
        yield server
    finally:
        with contextlib.suppress(Exception):
            server.stop()
        shutil.rmtree(directory, ignore_errors=True)


@dataclass
class PortalProcesses:
    base_url: str
    api_key: str
    env: dict[str, str]
    processes: list[subprocess.Popen]

    def manage(self, *args: str, timeout: float = 120) -> str:
        """Run a management command against the same database and Redis; returns its stdout."""
        result = subprocess.run(
            [sys.executable, "manage.py", *args], cwd=ROOT, env=self.env, check=True, capture_output=True, text=True,
            timeout=timeout,
        )
        return result.stdout

    def worker_pids(self) -> list[int]:
        """The uvicorn worker processes (children of the supervisor)."""
        supervisor = self.processes[0].pid
        children = Path(f"/proc/{supervisor}/task/{supervisor}/children")
        return [int(pid) for pid in children.read_text().split()] if children.exists() else []


def _wait_http(url: str, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(url, timeout=1) as response:
                if response.status == 200:
                    return
        except OSError:
            pass
        time.sleep(0.1)
    raise RuntimeError(f"{url} did not answer within {timeout}s")


@contextlib.contextmanager
def portal_processes(*, database_url: str, redis_url: str, backends: str, extra_env: dict[str, str] | None = None,
                     var_dir: Path, workers: int = 1) -> Iterator[PortalProcesses]:
    """The production shape: uvicorn serving portal.asgi and a separate usage ingester, on real services."""
    env = {
        "PATH": os.environ["PATH"],
        "DEBUG": "false",
        "SECRET_KEY": "fault-test-secret-key-0123456789abcdefghijklmnopqrstuvwxyz",
        "ALLOWED_HOSTS": "127.0.0.1,localhost",
        "SECURE_SSL_REDIRECT": "false",
        "DATABASE_URL": database_url,
        "REDIS_URL": redis_url,
        "REDIS_KEY_PREFIX": "wattle-fault:",
        "INFERENCE_BACKENDS": backends,
        "USAGE_INGEST_IN_PROCESS": "false",
        "WATTLE_VAR_DIR": str(var_dir),
        "STATIC_MANIFEST": "false",
        "LOG_LEVEL": "WARNING",
        "INFERENCE_PROBE_INTERVAL_S": "0.5",
        "INFERENCE_BACKEND_REFRESH_S": "0.5",
        **(extra_env or {}),
    }
    manage = [sys.executable, "manage.py"]
    subprocess.run([*manage, "migrate", "-v0"], cwd=ROOT, env=env, check=True, capture_output=True, timeout=300)
    demo = subprocess.run(
        [*manage, "bootstrap_demo", "--json"], cwd=ROOT, env={**env, "DEBUG": "true"}, check=True,
        capture_output=True, text=True, timeout=120,
    )
    api_key = json.loads(demo.stdout.strip().splitlines()[-1])["api_key"]
    port = free_port()
    processes = [
        subprocess.Popen(
            [sys.executable, "-m", "uvicorn", "portal.asgi:application", "--host", "127.0.0.1", "--port", str(port),
             "--loop", "uvloop", "--http", "httptools", "--no-access-log", "--log-level", "warning",
             "--workers", str(workers), *UVICORN_ARGS],
            cwd=ROOT, env=env,
        ),
        subprocess.Popen([*manage, "ingest_usage"], cwd=ROOT, env=env),
    ]
    try:
        _wait_http(f"http://127.0.0.1:{port}/healthz")
        yield PortalProcesses(base_url=f"http://127.0.0.1:{port}", api_key=api_key, env=env, processes=processes)
    finally:
        for process in processes:
            if process.poll() is None:
                process.send_signal(signal.SIGTERM)
        for process in processes:
            try:
                process.wait(15)
            except subprocess.TimeoutExpired:
                process.kill()
