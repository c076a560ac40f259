"""Run the vLLM simulator as a real subprocess for tests.

``run_simulator(**knobs)`` starts ``python -m inference.simulator`` on a free loopback port with the
knobs as CLI flags (``tpot_ms=5`` becomes ``--tpot-ms 5``, ``down=True`` becomes ``--down``, lists
repeat the flag's values), waits until it is ready, and stops it on exit. ``shared_simulator()``
hands out one simulator per knob set per test process, for tests that only read from it.
"""

from __future__ import annotations

import asyncio
import atexit
import contextlib
import http.client
import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
from collections.abc import AsyncIterator, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

REPO_ROOT = Path(__file__).resolve().parents[2]
STARTUP_TIMEOUT_S = 60.0
STOP_TIMEOUT_S = 5.0
_ENV_PREFIXES = ("VLLM_SIM_", "VLLM_API_KEY")
_PLURAL_FLAGS = {"served_model_names": "--served-model-name", "api_keys": "--api-key"}


@dataclass
class SimulatorProcess:
    """A running simulator: where it listens, plus helpers for the simulator-only control plane."""

    base_url: str
    port: int
    process: subprocess.Popen[bytes] = field(repr=False)
    args: tuple[str, ...] = ()

    @property
    def openai_base_url(self) -> str:
        """What to give the openai SDK as ``base_url``."""
        return f"{self.base_url}/v1"

    def url(self, path: str) -> str:
        return f"{self.base_url}{path}"

    def control(self, **knobs: Any) -> dict[str, Any]:
        """Change knobs at runtime (``POST /sim/control``); returns the new state."""
        return _post_json(self.url("/sim/control"), knobs)

    def state(self) -> dict[str, Any]:
        """Current knobs and counters (``GET /sim/state``)."""
        with urllib.request.urlopen(self.url("/sim/state"), timeout=10) as response:
            return json.loads(response.read())

    def health_status(self) -> int:
        try:
            with urllib.request.urlopen(self.url("/health"), timeout=10) as response:
                return response.status
        except urllib.error.HTTPError as exc:
            return exc.code

    def wait_healthy(self, timeout: float = STARTUP_TIMEOUT_S) -> None:
        deadline = time.monotonic() + timeout
        while self.health_status() != 200:
            if time.monotonic() > deadline:
                raise TimeoutError(f"simulator at {self.base_url} not healthy after {timeout}s")
            time.sleep(0.02)


def knobs_to_args(knobs: Mapping[str, Any]) -> list[str]:
    """CLI arguments for knob keyword arguments (``error_rate=0.5`` -> ``--error-rate 0.5``)."""
    args: list[str] = []
    for name, value in knobs.items():
        flag = _PLURAL_FLAGS.get(name, "--" + name.replace("_", "-"))
        if value is None or value is False:
            continue
        if value is True:
            args.append(flag)
        elif isinstance(value, list | tuple):
            if value:
                args.extend([flag, *(str(v) for v in value)])
        else:
            args.extend([flag, str(value)])
    return args


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _die_with_parent() -> None:
    # Linux only: the simulator gets SIGTERM if the test process dies without cleaning up.
    with contextlib.suppress(Exception):
        import ctypes

        libc = ctypes.CDLL("libc.so.6", use_errno=True)
        libc.prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG


def _port_open(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.settimeout(0.2)
        return sock.connect_ex(("127.0.0.1", port)) == 0


def _post_json(url: str, payload: Any) -> dict[str, Any]:
    request = urllib.request.Request(
        url, data=json.dumps(payload).encode(), headers={"Content-Type": "application/json"}, method="POST"
    )
    with urllib.request.urlopen(request, timeout=10) as response:
        return json.loads(response.read())


def _stop(process: subprocess.Popen[bytes]) -> None:
    if process.poll() is not None:
        return
    process.terminate()
    try:
        process.wait(timeout=STOP_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait(timeout=STOP_TIMEOUT_S)


def start_simulator(
    *, env: Mapping[str, str] | None = None, startup_timeout: float = STARTUP_TIMEOUT_S, **knobs: Any
) -> SimulatorProcess:
    """Start a simulator and wait until it is ready; the caller must ``stop_simulator`` it."""
    child_env = {k: v for k, v in os.environ.items() if not k.startswith(_ENV_PREFIXES)}
    child_env.update(env or {})
    # A cold start or a hard-down engine never reports healthy; the open port is all we can wait for.
    expect_healthy = not knobs.get("down") and not knobs.get("startup_delay_s")
    last_error = ""
    for _attempt in range(3):  # another process may grab the free port between probe and bind
        port = free_port()
        args = (sys.executable, "-m", "inference.simulator", "--host", "127.0.0.1", "--port", str(port))
        args += tuple(knobs_to_args(knobs))
        # The child keeps its own handle on the log; ours is only needed to report a failed start.
        with tempfile.TemporaryFile() as log:
            process = subprocess.Popen(
                args,
                cwd=REPO_ROOT,
                env=child_env,
                stdout=log,
                stderr=subprocess.STDOUT,
                preexec_fn=_die_with_parent if sys.platform.startswith("linux") else None,
            )
            simulator = SimulatorProcess(base_url=f"http://127.0.0.1:{port}", port=port, process=process, args=args)
            deadline = time.monotonic() + startup_timeout
            while process.poll() is None and not _port_open(port):
                if time.monotonic() > deadline:
                    _stop(process)
                    raise TimeoutError(f"simulator did not open port {port} within {startup_timeout}s")
                time.sleep(0.02)
            if process.poll() is None:
                if expect_healthy:
                    simulator.wait_healthy(max(1.0, deadline - time.monotonic()))
                return simulator
            log.seek(0)
            last_error = log.read().decode(errors="replace")
        if "address already in use" not in last_error.lower():
            break
    raise RuntimeError(f"simulator exited during startup:\n{last_error}")


def stop_simulator(simulator: SimulatorProcess) -> None:
    _stop(simulator.process)


@contextlib.contextmanager
def run_simulator(
    *, env: Mapping[str, str] | None = None, startup_timeout: float = STARTUP_TIMEOUT_S, **knobs: Any
) -> Iterator[SimulatorProcess]:
    """Run a simulator subprocess for the duration of the ``with`` block.

    Knobs are the CLI flags in snake case: ``served_model_names``, ``embedding_model`` ('' disables),
    ``max_model_len``, ``api_keys``, ``ttft_ms``, ``tpot_ms``, ``max_num_seqs``, ``error_rate``,
    ``abort_after_tokens``, ``startup_delay_s``, ``down``. ``VLLM_SIM_*``/``VLLM_API_KEY`` from the
    test environment are not inherited; pass ``env`` to set them deliberately.
    """
    simulator = start_simulator(env=env, startup_timeout=startup_timeout, **knobs)
    try:
        yield simulator
    finally:
        stop_simulator(simulator)


@contextlib.asynccontextmanager
async def async_run_simulator(
    *, env: Mapping[str, str] | None = None, startup_timeout: float = STARTUP_TIMEOUT_S, **knobs: Any
) -> AsyncIterator[SimulatorProcess]:
    """``run_simulator`` for async tests: start-up and shut-down run off the event loop."""
    simulator = await asyncio.to_thread(start_simulator, env=env, startup_timeout=startup_timeout, **knobs)
    try:
        yield simulator
    finally:
        await asyncio.to_thread(stop_simulator, simulator)


@dataclass(frozen=True)
class RawResponse:
    """A response read to the end, with the body exactly as sent (chunked framing removed)."""

    status: int
    headers: http.client.HTTPMessage
    body: bytes

    def json(self) -> Any:
        return json.loads(self.body)


def raw_request(
    url: str,
    *,
    method: str = "POST",
    json_body: Any = None,
    data: bytes | None = None,
    headers: Mapping[str, str] | None = None,
    timeout: float = 30.0,
) -> RawResponse:
    """One HTTP request with ``http.client``, so tests see exact status, headers and body bytes.

    ``json_body`` is sent compactly with ``Content-Type: application/json`` unless ``headers`` says
    otherwise; ``data`` is sent as is.
    """
    parts = urlsplit(url)
    send_headers = dict(headers or {})
    if json_body is not None:
        data = json.dumps(json_body, separators=(",", ":"), ensure_ascii=False).encode()
        send_headers.setdefault("Content-Type", "application/json")
    connection = http.client.HTTPConnection(parts.hostname, parts.port, timeout=timeout)
    try:
        path = parts.path + (f"?{parts.query}" if parts.query else "")
        connection.request(method, path, body=data, headers=send_headers)
        response = connection.getresponse()
        return RawResponse(response.status, response.headers, response.read())
    finally:
        connection.close()


def sse_payloads(body: bytes) -> list[bytes]:
    """The payloads of an SSE body that must consist solely of ``data: <payload>\\n\\n`` events."""
    if not body.endswith(b"\n\n"):
        raise ValueError("SSE body does not end with a blank line")
    events = body[:-2].split(b"\n\n")
    payloads = []
    for event in events:
        if not event.startswith(b"data: ") or b"\n" in event:
            raise ValueError(f"not a single-line data event: {event[:80]!r}")
        payloads.append(event[len(b"data: ") :])
    return payloads


_shared: dict[str, SimulatorProcess] = {}
_shared_lock = threading.Lock()


def shared_simulator(**knobs: Any) -> SimulatorProcess:
    """One simulator per distinct set of knobs per test process, stopped when the process exits.

    For tests that only read from it; anything that calls ``control`` needs its own simulator.
    """
    key = json.dumps(knobs, sort_keys=True, default=str)
    with _shared_lock:
        simulator = _shared.get(key)
        if simulator is None or simulator.process.poll() is not None:
            simulator = start_simulator(**knobs)
            _shared[key] = simulator
            atexit.register(stop_simulator, simulator)
        return simulator
