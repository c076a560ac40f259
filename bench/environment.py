"""The production shape on this machine, bounded and self-cleaning.

Redis (``REDIS_URL`` or a private ``redis-server``), PostgreSQL (``DATABASE_URL`` or a local ``wattle_bench``
database), the vLLM simulator, and the gateway as ``uvicorn --workers N`` with every data-plane feature on.
Every process started here is a child of this one, stopped by its own id at the end, and told by the kernel
to exit if this process dies first.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass, field
from decimal import Decimal
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import orjson

from core.proxies import UVICORN_ARGS

REPO_ROOT = Path(__file__).resolve().parent.parent
PYTHON = sys.executable
DEFAULT_DATABASE_URL = "postgres://postgres@127.0.0.1:5432/wattle_bench"
KEY_PREFIX = "wattle-bench:"
BACKEND_NAME = "bench-sim"
TENANT_NAME = "Wattle Bench"
MODEL = "mistralai/Mistral-7B-Instruct-v0.3"
# Far above any scenario's concurrency, so the simulator and the pool never queue or shed what P5 opens.
UPSTREAM_CONCURRENCY = 4096


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def die_with_parent() -> None:
    with contextlib.suppress(Exception):
        import ctypes

        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG


def _port_open(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.settimeout(0.2)
        return sock.connect_ex(("127.0.0.1", port)) == 0


def raise_open_file_limit() -> int:
    """Thousands of open streams need thousands of sockets in each process; children inherit the limit."""
    import resource

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard == resource.RLIM_INFINITY or hard > soft:
        target = 65536 if hard == resource.RLIM_INFINITY else hard
        with contextlib.suppress(ValueError, OSError):
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
    return resource.getrlimit(resource.RLIMIT_NOFILE)[0]


@dataclass
class ManagedProcess:
    name: str
    process: subprocess.Popen[bytes]
    log_path: Path | None = None

    @property
    def pid(self) -> int:
        return self.process.pid

    def alive(self) -> bool:
        return self.process.poll() is None

    def stop(self, timeout: float = 15.0) -> None:
        if self.process.poll() is not None:
            return
        self.process.send_signal(signal.SIGTERM)
        try:
            self.process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            # The child leads its own process group (start_new_session): this reaches only what it started.
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait(timeout=timeout)

    def log_tail(self, lines: int = 20) -> str:
        if self.log_path is None or not self.log_path.exists():
            return ""
        return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])


def start_process(name: str, args: list[str], *, env: dict[str, str], log_path: Path) -> ManagedProcess:
    with log_path.open("ab") as log:
        process = subprocess.Popen(
            args,
            cwd=REPO_ROOT,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            preexec_fn=die_with_parent if sys.platform.startswith("linux") else None,
        )
    return ManagedProcess(name, process, log_path)


def wait_until(check: Callable[[], bool], *, timeout: float, what: str, process: ManagedProcess | None = None) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        if process is not None and not process.alive():
            raise RuntimeError(f"{what}: {process.name} exited\n{process.log_tail()}")
        if time.monotonic() > deadline:
            tail = process.log_tail() if process is not None else ""
            raise TimeoutError(f"{what}: not ready after {timeout:.0f}s\n{tail}")
        time.sleep(0.05)


def http_call(
    url: str, *, payload: Any = None, headers: dict[str, str] | None = None, timeout: float = 10
) -> tuple[int, bytes]:
    """GET (or POST ``payload`` as JSON) a loopback URL this module built; raises on a non-2xx answer."""
    if not url.startswith("http://127.0.0.1:"):
        raise ValueError(f"not a loopback URL: {url}")
    data = None if payload is None else orjson.dumps(payload)
    headers = {"content-type": "application/json", **(headers or {})}
    request = urllib.request.Request(url, data=data, headers=headers)  # noqa: S310
    with urllib.request.urlopen(request, timeout=timeout) as response:  # noqa: S310
        return response.status, response.read()


def http_json(url: str, *, payload: Any = None, headers: dict[str, str] | None = None, timeout: float = 10) -> Any:
    return orjson.loads(http_call(url, payload=payload, headers=headers, timeout=timeout)[1])


def read_rss_mb(pid: int) -> float | None:
    try:
        with open(f"/proc/{pid}/status", "rb") as status:
            for line in status:
                if line.startswith(b"VmRSS:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        return None
    return None


_CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pid: int) -> float | None:
    """User + system CPU time a process has used so far."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = stat[stat.rindex(")") + 2 :].split()
    return (int(fields[11]) + int(fields[12])) / _CLOCK_TICKS


def child_pids(pid: int) -> list[tuple[int, str]]:
    """(pid, command line) of the direct children of ``pid``."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
            ppid = int(stat[stat.rindex(")") + 2 :].split()[1])
            if ppid == pid:
                found.append((int(entry.name), (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode()))
        except (OSError, ValueError):
            continue
    return found


def gateway_command(server: str, port: int, workers: int) -> list[str]:
    """The production command line of the gateway under the chosen ASGI server."""
    if server == "granian":
        return [
            PYTHON, "-m", "granian", "--interface", "asgi", "--host", "127.0.0.1", "--port", str(port),
            "--workers", str(workers), "--loop", "uvloop", "--no-access-log", "--log-level", "warning",
            "portal.asgi:application",
        ]
    return [
        PYTHON, "-m", "uvicorn", "portal.asgi:application", "--host", "127.0.0.1", "--port", str(port),
        "--workers", str(workers), "--loop", "uvloop", "--http", "httptools", "--no-access-log",
        "--log-level", "warning", *UVICORN_ARGS,
    ]


@dataclass
class GatewayProcess:
    workers: int
    port: int
    managed: ManagedProcess
    server: str = "uvicorn"

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def worker_pids(self) -> list[int]:
        if self.server == "granian":
            return [pid for pid, _cmdline in child_pids(self.managed.pid)]  # granian always forks its workers
        if self.workers == 1:
            return [self.managed.pid]  # uvicorn serves in the main process with one worker
        return [pid for pid, cmdline in child_pids(self.managed.pid) if "spawn_main" in cmdline]

    def log_report(self) -> dict[str, Any]:
        """What the gateway wrote: access-log lines (proof it was on) and any error lines, with samples."""
        access = errors = 0
        samples: list[str] = []
        if self.managed.log_path is not None and self.managed.log_path.exists():
            with self.managed.log_path.open("rb") as log:
                for line in log:
                    if b"wattle.access" in line:
                        access += 1
                    elif b'"ERROR"' in line or b'"CRITICAL"' in line or b"Traceback" in line or b"ERROR:" in line:
                        errors += 1
                        if len(samples) < 5:
                            samples.append(line.decode(errors="replace")[:400])
        return {"access_log_lines": access, "error_lines": errors, "error_samples": samples}


@dataclass
class BenchEnvironment:
    """Start with ``start()``; ``close()`` stops and removes everything this run created."""

    log: Callable[[str], None] = print
    keep_logs: bool = False
    workdir: Path = field(default_factory=lambda: Path(tempfile.mkdtemp(prefix="wattle-bench-")))
    redis_url: str = ""
    database_url: str = ""
    private_redis: bool = False
    redis_pid: int | None = None
    simulator: ManagedProcess | None = None
    simulator_port: int = 0
    api_key: str = ""
    tenant_id: str = ""
    gateways: dict[int, GatewayProcess] = field(default_factory=dict)
    env: dict[str, str] = field(default_factory=dict)
    server: str = "uvicorn"  # or "granian": the ASGI server the gateway runs under
    _cleanup: contextlib.ExitStack = field(default_factory=contextlib.ExitStack)

    # --- lifecycle ---------------------------------------------------------------------------------
    def start(self) -> None:
        self._cleanup.callback(self._remove_workdir)
        raise_open_file_limit()
        self._start_redis()
        self._prepare_database()
        self._start_simulator()
        self.env = self._service_env()
        self.log("migrating and publishing the backend pool ...")
        self._manage("migrate", "--noinput")
        self._manage("sync_backends")
        self._setup_django()
        self._publish_pool()
        self._issue_key()

    def close(self) -> None:
        self._cleanup.close()

    def __enter__(self) -> BenchEnvironment:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def _remove_workdir(self) -> None:
        if self.keep_logs:
            self.log(f"logs kept in {self.workdir}")
        else:
            shutil.rmtree(self.workdir, ignore_errors=True)

    # --- Redis -------------------------------------------------------------------------------------
    def _start_redis(self) -> None:
        given = os.environ.get("REDIS_URL")
        if given:
            self.redis_url = given
            self.log(f"Redis: {given} (REDIS_URL; keys under {KEY_PREFIX})")
            self._cleanup.callback(self._delete_prefixed_keys)
            return
        if shutil.which("redis-server") is None:
            raise RuntimeError("redis-server is not installed and REDIS_URL is not set")
        port = free_port()
        args = ["redis-server", "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"]
        server = start_process("redis", args, env=dict(os.environ), log_path=self.workdir / "redis.log")
        self._cleanup.callback(server.stop)
        wait_until(lambda: _port_open(port), timeout=15, what="redis-server", process=server)
        self.redis_url = f"redis://127.0.0.1:{port}/0"
        self.private_redis = True
        self.redis_pid = server.pid
        self.log(f"Redis: private redis-server on port {port} (no persistence), pid {server.pid}")

    def _delete_prefixed_keys(self) -> None:
        with contextlib.suppress(Exception):
            from core.redis import get_redis

            client = get_redis()
            doomed = list(client.scan_iter(match=f"{KEY_PREFIX}*", count=1000))
            for start in range(0, len(doomed), 1000):
                client.delete(*doomed[start : start + 1000])

    # --- PostgreSQL --------------------------------------------------------------------------------
    def _prepare_database(self) -> None:
        self.database_url = os.environ.get("DATABASE_URL") or DEFAULT_DATABASE_URL
        parts = urlsplit(self.database_url)
        if not parts.scheme.startswith("postgres"):
            raise RuntimeError("the bench needs PostgreSQL: DATABASE_URL must be a postgres:// URL")
        name = parts.path.lstrip("/")
        import psycopg

        admin_url = urlunsplit((parts.scheme, parts.netloc, "/postgres", parts.query, ""))
        with psycopg.connect(admin_url.replace("postgres://", "postgresql://", 1), autocommit=True) as conn:
            exists = conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", (name,)).fetchone()
            if not exists:
                from psycopg import sql

                conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
                self.log(f"PostgreSQL: created database {name}")
        self.log(f"PostgreSQL: {parts.hostname}:{parts.port or 5432}/{name}")

    # --- simulator ---------------------------------------------------------------------------------
    def _start_simulator(self) -> None:
        port = free_port()
        env = {k: v for k, v in os.environ.items() if not k.startswith(("VLLM_SIM_", "VLLM_API_KEY"))}
        args = [PYTHON, "-m", "inference.simulator", "--host", "127.0.0.1", "--port", str(port)]
        args += ["--max-num-seqs", str(UPSTREAM_CONCURRENCY), "--log-level", "warning"]
        self.simulator = start_process("simulator", args, env=env, log_path=self.workdir / "simulator.log")
        self._cleanup.callback(self.simulator.stop)
        self.simulator_port = port
        wait_until(self._simulator_healthy, timeout=90, what="simulator", process=self.simulator)
        self.log(f"simulator: port {port}, pid {self.simulator.pid}")

    def _simulator_healthy(self) -> bool:
        try:
            return http_call(f"{self.simulator_url}/health", timeout=2)[0] == 200
        except (urllib.error.URLError, OSError):
            return False

    @property
    def simulator_url(self) -> str:
        return f"http://127.0.0.1:{self.simulator_port}"

    def simulator_control(self, **knobs: Any) -> dict[str, Any]:
        return http_json(f"{self.simulator_url}/sim/control", payload=knobs)

    def simulator_state(self) -> dict[str, Any]:
        return http_json(f"{self.simulator_url}/sim/state")

    # --- Django, the pool, the tenant --------------------------------------------------------------
    def _service_env(self) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith(("VLLM_SIM_", "VLLM_API_KEY"))}
        env.update(
            {
                "DJANGO_SETTINGS_MODULE": "portal.settings",
                "DEBUG": "false",
                "SECRET_KEY": "bench-" + secrets.token_urlsafe(32),
                "ALLOWED_HOSTS": "127.0.0.1,localhost",
                "SECURE_SSL_REDIRECT": "false",
                "USAGE_INGEST_IN_PROCESS": "false",
                "DATABASE_URL": self.database_url,
                "REDIS_URL": self.redis_url,
                "REDIS_KEY_PREFIX": KEY_PREFIX,
                "INFERENCE_BACKENDS": f"{BACKEND_NAME}=http://127.0.0.1:{self.simulator_port}",
                "LOG_LEVEL": "INFO",
                "WATTLE_VAR_DIR": str(self.workdir / "var"),
                "STATIC_MANIFEST": "false",  # P9 renders pages in-process, without a collectstatic build
            }
        )
        env.pop("API_KEY_PEPPER", None)  # derived from this run's SECRET_KEY, the same in every process
        return env

    def _manage(self, *args: str) -> None:
        done = subprocess.run(
            [PYTHON, "manage.py", *args], cwd=REPO_ROOT, env=self.env, capture_output=True, timeout=300, check=False
        )
        if done.returncode != 0:
            raise RuntimeError(f"manage.py {' '.join(args)} failed:\n{done.stderr.decode(errors='replace')[-3000:]}")

    def _setup_django(self) -> None:
        os.environ.update(self.env)
        import django

        django.setup()

    def _publish_pool(self) -> None:
        from inference.models import Backend
        from inference.services import backends_publish

        # The bench's pool is exactly the simulator, sized like a replica that takes every open stream.
        Backend.objects.exclude(name=BACKEND_NAME).update(enabled=False)
        Backend.objects.filter(name=BACKEND_NAME).update(max_concurrency=UPSTREAM_CONCURRENCY)
        backends_publish()

    def _issue_key(self) -> None:
        from billing import snapshot
        from tenants import services
        from tenants.models import ApiKey, Tenant

        tenant = Tenant.objects.filter(name=TENANT_NAME).first()
        if tenant is None:
            tenant = services.tenant_create(name=TENANT_NAME, billing_email="bench@wattle.local")
        self._lift_limits(tenant)
        issued = services.api_key_create(tenant=tenant, name="bench")
        snapshot.rebuild()
        self.api_key = issued.plaintext
        self.tenant_id = str(tenant.pk)
        key_pk = issued.api_key.pk

        def revoke() -> None:
            from billing.models import UsageEvent

            services.api_key_revoke(api_key=ApiKey.objects.get(pk=key_pk))
            # The runs' usage rows were only there to prove none was lost; the database is left as found.
            UsageEvent.objects.filter(key_id=issued.api_key.key_id).delete()

        self._cleanup.callback(revoke)
        self.log(f"tenant {TENANT_NAME!r} ({self.tenant_id}), key {issued.api_key.key_id}")

    @staticmethod
    def _lift_limits(tenant: Any) -> None:
        """Every limit set, far above what the bench sends: the admission script checks and counts all six
        kinds on every request, as for a real tenant, and never refuses one."""
        from billing.services import tenant_quota_set

        tenant_quota_set(
            tenant=tenant,
            rpm_limit=2_000_000_000,
            tpm_limit=2_000_000_000,
            max_concurrent=1_000_000,
            daily_token_limit=10**15,
            monthly_token_budget=10**15,
            monthly_spend_cap_aud=Decimal("9999999999.99"),
        )

    @property
    def key_id(self) -> str:
        return self.api_key.split("_")[1]

    # --- gateway -----------------------------------------------------------------------------------
    def start_gateway(self, workers: int) -> GatewayProcess:
        if workers in self.gateways:
            return self.gateways[workers]
        port = free_port()
        args = gateway_command(self.server, port, workers)
        managed = start_process(
            f"gateway ({workers} worker{'s' if workers > 1 else ''})",
            args,
            env=self.env,
            log_path=self.workdir / f"gateway-w{workers}.log",
        )
        self._cleanup.callback(self._stop_gateway, workers)
        gateway = GatewayProcess(workers=workers, port=port, managed=managed, server=self.server)
        self.gateways[workers] = gateway
        wait_until(lambda: self._gateway_ready(gateway), timeout=120, what="gateway", process=managed)
        if workers > 1:
            wait_until(lambda: len(gateway.worker_pids()) == workers, timeout=30, what="gateway workers")
        self.log(f"gateway: {workers} worker(s) on port {port}, pids {gateway.worker_pids()}")
        return gateway

    def _stop_gateway(self, workers: int) -> None:
        gateway = self.gateways.pop(workers, None)
        if gateway is not None:
            gateway.managed.stop()

    def stop_gateway(self, workers: int) -> None:
        self._stop_gateway(workers)

    def _gateway_ready(self, gateway: GatewayProcess) -> bool:
        try:
            models = http_json(
                f"{gateway.base_url}/v1/models", headers={"authorization": f"Bearer {self.api_key}"}, timeout=2
            )
        except (urllib.error.URLError, OSError, ValueError):
            return False
        return any(card.get("id") == MODEL for card in models.get("data", []))
