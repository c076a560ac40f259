"""P6: the playground's sockets under load. N signed-in agents each hold a playground WebSocket on one server
process (uvicorn with the portal's ASGI app, the same command line as the gateway's) and stream replies from the
simulator at the same time; every chunk's relay delay is measured from the moment it left the simulator to the
moment its frame reached the client.

How the delay is measured: the simulator's ``stamp_chunks`` knob (benches only) replaces each token's text with
the wall-clock time its chunk left (``@<epoch s>;``); the consumer relays that text unchanged in its ``delta``
frames (several chunks may share a frame), and the client, on the same host clock, subtracts each stamp from the
time the frame arrived. The baseline is the same number of streams read straight from the simulator over HTTP in
the same client: the floor of what a client on this machine can see (its own event loop, the simulator's). The
client runs in its own process (``python -m bench.playground``, spec on stdin, result on stdout), on uvloop.

The sessions are made in the bench's database directly (users, memberships as agents of the bench tenant, and
Django sessions carrying the auth hash), not by signing in 500 times through the login form.
"""

from __future__ import annotations

import asyncio
import dataclasses
import re
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import orjson

P6_TITLE = "playground: WebSocket sessions streaming through one server process"
P6_TARGET = "0 errors; p99 relay delay <= 50 ms"
P6_MAX_P99_MS = 50.0
P6_SOCKETS = 500
P6_USER_DOMAIN = "p6.bench.wattle.local"
_STAMP = re.compile(rb"@(\d+\.\d+);")
ECHO = " ".join(["Thanks for calling, your order was dispatched on Monday and arrives on Thursday."] * 8)


# --- the client (no Django) -------------------------------------------------------------------------
@dataclass
class ClientSpec:
    mode: str  # "sockets" (the playground) or "direct" (SSE from the simulator)
    url: str  # ws://.../ws/t/<slug>/playground/ or http://sim/v1/chat/completions
    model: str
    concurrency: int
    replies: int  # per client, one after another
    max_tokens: int
    ramp_s: float  # clients start evenly over this long
    origin: str = ""
    cookie_name: str = "sessionid"
    sessions: list[str] = field(default_factory=list)
    timeout_s: float = 120.0
    compress: int = 0  # 15: offer permessage-deflate as browsers do (uvicorn accepts it by default)


@dataclass
class ClientResult:
    mode: str
    concurrency: int
    connected: int
    replies_ok: int
    chunks: int
    errors: int
    error_kinds: dict[str, int]
    error_samples: list[str]
    delay_ms: dict[str, float] | None
    p99_by_reply: list[float]  # each reply round's p99 (the first one meets a cold process)
    peak_streaming: int
    wall_s: float


class _Client:
    def __init__(self, spec: ClientSpec) -> None:
        self.spec = spec
        self.delays: list[float] = []
        self.by_reply: dict[int, list[float]] = {}
        self.errors: dict[str, int] = {}
        self.samples: list[str] = []
        self.connected = 0
        self.replies_ok = 0
        self.streaming = 0
        self.peak_streaming = 0

    def error(self, kind: str, detail: str = "") -> None:
        self.errors[kind] = self.errors.get(kind, 0) + 1
        if len(self.samples) < 5:
            self.samples.append(f"{kind}: {detail[:300]}")

    def stamps(self, data: bytes, received: float, reply: int) -> int:
        found = _STAMP.findall(data)
        round_delays = self.by_reply.setdefault(reply, [])
        for stamp in found:
            delay = (received - float(stamp)) * 1000
            self.delays.append(delay)
            round_delays.append(delay)
        return len(found)

    async def run(self) -> ClientResult:
        import aiohttp

        spec = self.spec
        started = time.monotonic()
        connector = aiohttp.TCPConnector(limit=0)
        timeout = aiohttp.ClientTimeout(total=None, sock_read=spec.timeout_s)
        async with aiohttp.ClientSession(connector=connector, timeout=timeout) as session:
            one = self._socket if spec.mode == "sockets" else self._direct
            await asyncio.gather(*(one(session, n) for n in range(spec.concurrency)))
        ordered = sorted(self.delays)
        summary = None
        if ordered:
            summary = {"count": len(ordered), "p50": _pct(ordered, 50), "p95": _pct(ordered, 95),
                       "p99": _pct(ordered, 99), "max": ordered[-1], "mean": sum(ordered) / len(ordered)}
        return ClientResult(
            mode=spec.mode, concurrency=spec.concurrency, connected=self.connected, replies_ok=self.replies_ok,
            chunks=len(ordered), errors=sum(self.errors.values()), error_kinds=self.errors,
            error_samples=self.samples, delay_ms=summary, peak_streaming=self.peak_streaming,
            p99_by_reply=[_pct(sorted(self.by_reply[r]), 99) for r in sorted(self.by_reply) if self.by_reply[r]],
            wall_s=time.monotonic() - started,
        )

    def _messages(self, n: int, reply: int) -> list[dict]:
        # An ``/echo`` reply longer than max_tokens: every reply has exactly max_tokens chunks.
        return [{"role": "system", "content": "You are a helpful contact-centre assistant."},
                {"role": "user", "content": f"/echo {n} {reply} " + ECHO}]

    async def _start_delay(self, n: int) -> None:
        if self.spec.ramp_s and self.spec.concurrency > 1:
            await asyncio.sleep(self.spec.ramp_s * n / self.spec.concurrency)

    def _begin(self) -> None:
        self.streaming += 1
        self.peak_streaming = max(self.peak_streaming, self.streaming)

    async def _socket(self, session, n: int) -> None:
        import aiohttp

        spec = self.spec
        await self._start_delay(n)
        headers = {"Origin": spec.origin, "Cookie": f"{spec.cookie_name}={spec.sessions[n]}"}
        try:
            async with session.ws_connect(spec.url, headers=headers, max_msg_size=0, autoping=True,
                                          compress=spec.compress) as ws:
                first = await ws.receive(timeout=spec.timeout_s)
                if first.type != aiohttp.WSMsgType.TEXT or orjson.loads(first.data).get("type") != "ready":
                    self.error("not_ready", str(first.data if first.type == aiohttp.WSMsgType.TEXT else first.type))
                    return
                self.connected += 1
                for reply in range(spec.replies):
                    frame = {"type": "chat", "id": f"r{reply}", "model": spec.model, "max_tokens": spec.max_tokens,
                             "messages": self._messages(n, reply)}
                    await ws.send_str(orjson.dumps(frame).decode())
                    self._begin()
                    try:
                        if not await self._read_reply(ws, spec.max_tokens, reply):
                            return
                    finally:
                        self.streaming -= 1
                    if reply + 1 < spec.replies:
                        await asyncio.sleep(1.0)  # the socket's frame allowance: one a second after a burst
        except (aiohttp.ClientError, OSError, TimeoutError) as exc:
            self.error(type(exc).__name__, str(exc))

    async def _read_reply(self, ws, max_tokens: int, reply: int) -> bool:
        import aiohttp

        chunks = 0
        while True:
            message = await ws.receive(timeout=self.spec.timeout_s)
            received = time.time()
            if message.type != aiohttp.WSMsgType.TEXT:
                self.error("closed", f"{message.type} {message.data}")
                return False
            data = message.data.encode()
            if b'"type":"delta"' in data:
                chunks += self.stamps(data, received, reply)
                continue
            frame = orjson.loads(data)
            if frame["type"] == "done":
                if frame["status"] != 200 or frame["completion_tokens"] != max_tokens or chunks != max_tokens:
                    self.error("incomplete", f"status {frame['status']}, {frame['completion_tokens']} tokens, "
                                             f"{chunks} stamps")
                    return True
                self.replies_ok += 1
                return True
            if frame["type"] == "error":
                self.error(f"error_{frame.get('code')}", frame.get("message", ""))
                if frame.get("id") is None:
                    continue
                return frame.get("request_id") is None  # refused before it began: the socket goes on
            # start, pong: nothing to measure

    async def _direct(self, session, n: int) -> None:
        import aiohttp

        spec = self.spec
        await self._start_delay(n)
        try:
            for reply in range(spec.replies):
                body = {"model": spec.model, "messages": self._messages(n, reply), "max_tokens": spec.max_tokens,
                        "stream": True}
                self._begin()
                try:
                    async with session.post(spec.url, json=body) as response:
                        if response.status != 200:
                            self.error(f"http_{response.status}", await response.text())
                            return
                        self.connected += reply == 0
                        chunks, done = 0, False
                        async for piece in response.content.iter_any():
                            chunks += self.stamps(piece, time.time(), reply)
                            done = done or b"[DONE]" in piece
                        if not done or chunks != spec.max_tokens:
                            self.error("incomplete", f"{chunks} stamps, done={done}")
                        else:
                            self.replies_ok += 1
                finally:
                    self.streaming -= 1
                if reply + 1 < spec.replies:
                    await asyncio.sleep(1.0)  # the same pause as the sockets'
        except (aiohttp.ClientError, OSError, TimeoutError) as exc:
            self.error(type(exc).__name__, str(exc))


def _pct(ordered: list[float], pct: float) -> float:
    import math

    rank = max(1, math.ceil(pct / 100 * len(ordered)))
    return ordered[min(rank, len(ordered)) - 1]


def main() -> int:
    spec = ClientSpec(**orjson.loads(sys.stdin.buffer.read()))
    try:
        import uvloop

        runner = asyncio.Runner(loop_factory=uvloop.new_event_loop)
    except ImportError:
        runner = asyncio.Runner()
    with runner:
        result = runner.run(_Client(spec).run())
    sys.stdout.buffer.write(orjson.dumps(dataclasses.asdict(result)))
    sys.stdout.flush()
    return 0


# --- the bench's side (Django) --------------------------------------------------------------------------
def agent_sessions(tenant_id: str, count: int) -> list[str]:
    """``count`` agents of the bench tenant, each with a fresh signed-in session; returns the session keys. The
    users are kept for later runs; their sessions are made anew each run (expired ones are Django's to clear)."""
    from importlib import import_module

    from django.conf import settings
    from django.contrib.auth import BACKEND_SESSION_KEY, HASH_SESSION_KEY, SESSION_KEY, get_user_model

    from tenants.models import Membership, Role

    user_model = get_user_model()
    store = import_module(settings.SESSION_ENGINE).SessionStore
    emails = [f"agent{n:04d}@{P6_USER_DOMAIN}" for n in range(count)]
    existing = {u.email: u for u in user_model.objects.filter(email__in=emails)}
    missing = [user_model(username=f"p6-agent{n:04d}", email=email)
               for n, email in enumerate(emails) if email not in existing]
    for user in missing:
        user.set_unusable_password()
    user_model.objects.bulk_create(missing)
    users = list(user_model.objects.filter(email__in=emails).order_by("email"))
    members = set(Membership.objects.filter(tenant_id=tenant_id, user__in=users).values_list("user_id", flat=True))
    Membership.objects.bulk_create([Membership(tenant_id=tenant_id, user=u, role=Role.AGENT)
                                    for u in users if u.pk not in members])
    keys = []
    for user in users:
        session = store()
        session[SESSION_KEY] = str(user.pk)
        session[BACKEND_SESSION_KEY] = settings.AUTHENTICATION_BACKENDS[0]
        session[HASH_SESSION_KEY] = user.get_session_auth_hash()
        session.create()
        keys.append(session.session_key)
    return keys


def run_client(spec: ClientSpec, *, tick: Callable[[], None] | None = None) -> ClientResult:
    from bench.environment import PYTHON, REPO_ROOT, die_with_parent

    process = subprocess.Popen(
        [PYTHON, "-m", "bench.playground"], cwd=REPO_ROOT, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
        stderr=subprocess.PIPE, start_new_session=True,
        preexec_fn=die_with_parent if sys.platform.startswith("linux") else None,
    )
    payload: bytes | None = orjson.dumps(dataclasses.asdict(spec))
    limit = time.monotonic() + spec.ramp_s + spec.timeout_s * (spec.replies + 1) + 30
    while True:
        try:
            out, err = process.communicate(input=payload, timeout=0.25)
            break
        except subprocess.TimeoutExpired:
            payload = None
            if tick is not None:
                tick()
            if time.monotonic() > limit:
                process.kill()
                process.communicate()
                raise TimeoutError("the P6 client overran its bound") from None
    if process.returncode != 0:
        raise RuntimeError(f"P6 client failed:\n{err.decode(errors='replace')[-3000:]}")
    return ClientResult(**orjson.loads(out))


@dataclass
class P6Settings:
    """Every socket streams two replies of 64 tokens at 100 ms a token, one after the other (1 s apart, the
    socket's frame allowance), all sockets starting within ``ramp_s``: at 500 sockets, 5,000 chunks a second
    through one process at the peak, P5's relay rate. Faster tokens measure this shared 2-core machine (where the
    load generator and the simulator take their share) rather than the relay."""

    sockets: int = P6_SOCKETS
    replies: int = 2
    max_tokens: int = 64
    tpot_ms: float = 100.0  # 10 tokens a second per session: a replica's pace with hundreds of streams in a batch
    ramp_s: float = 5.0
    compress: int = 0  # the bench client offers no permessage-deflate unless asked (see docs/performance.md)


def run(env: Any, settings: P6Settings, *, log: Callable[[str], None] = print) -> tuple[Any, list[ClientResult]]:
    """Baseline (direct SSE) and the playground sockets, back to back, on a one-worker server; the verdict."""
    from django.conf import settings as django_settings

    from bench.environment import MODEL
    from bench.scenarios import Verdict
    from tenants.models import Tenant

    gateway = env.start_gateway(1)
    slug = Tenant.objects.get(pk=env.tenant_id).slug
    sessions = agent_sessions(env.tenant_id, settings.sockets)
    env.simulator_control(ttft_ms=0.0, tpot_ms=settings.tpot_ms, stamp_chunks=True)
    common = {"model": MODEL, "concurrency": settings.sockets, "replies": settings.replies,
              "max_tokens": settings.max_tokens, "ramp_s": settings.ramp_s}
    results = []
    peak_rss = 0.0
    try:
        direct = run_client(ClientSpec(mode="direct", url=env.simulator_url + "/v1/chat/completions", **common))
        log(_describe(direct))
        results.append(direct)

        from bench.environment import cpu_seconds, read_rss_mb

        def sample() -> None:
            nonlocal peak_rss
            peak_rss = max(peak_rss, read_rss_mb(gateway.managed.pid) or 0.0)

        socket_url = gateway.base_url.replace("http://", "ws://") + f"/ws/t/{slug}/playground/"
        socket_args = {"url": socket_url, "origin": gateway.base_url,
                       "cookie_name": django_settings.SESSION_COOKIE_NAME, "compress": settings.compress}
        # Warm-up, not measured: a fresh process loads the tokenizer and fills its caches on its first replies.
        warm = min(10, settings.sockets)
        warmup = run_client(ClientSpec(mode="sockets", model=MODEL, concurrency=warm, replies=1, max_tokens=8,
                                       ramp_s=0.0, sessions=sessions[:warm], **socket_args))
        if warmup.errors:
            log(f"  warm-up errors: {warmup.error_kinds} {warmup.error_samples[:2]}")
        cpu_before = cpu_seconds(gateway.managed.pid) or 0.0
        sockets = run_client(ClientSpec(mode="sockets", sessions=sessions, **socket_args, **common), tick=sample)
        cpu_s = (cpu_seconds(gateway.managed.pid) or 0.0) - cpu_before
        cpu_us_per_chunk = cpu_s * 1e6 / sockets.chunks if sockets.chunks else float("nan")
        log(_describe(sockets) + f"  server rss peak {peak_rss:.0f} MB, cpu {cpu_s:.1f} s "
                                 f"({cpu_us_per_chunk:.0f} µs per chunk, connects and replies included)")
        results.append(sockets)
    finally:
        env.simulator_control(stamp_chunks=False, tpot_ms=0.0)
    expected = settings.sockets * settings.replies
    d99 = (direct.delay_ms or {}).get("p99", float("nan"))
    s = sockets.delay_ms or {}
    s99 = s.get("p99", float("nan"))
    passed = (sockets.errors == 0 and sockets.replies_ok == expected and sockets.connected == settings.sockets
              and s99 <= P6_MAX_P99_MS)
    verdict = Verdict(
        "P6", 1, P6_TARGET,
        direct=f"p50 {_ms(direct, 'p50')} / p99 {_ms(direct, 'p99')} ms",
        gateway=f"{sockets.connected} sockets, p50 {_ms(sockets, 'p50')} / p99 {_ms(sockets, 'p99')} ms, "
                f"{sockets.errors} err",
        comparison=f"p99 +{s99 - d99:.1f} ms",
        passed=passed,
        metrics={"direct": dataclasses.asdict(direct), "sockets": dataclasses.asdict(sockets),
                 "server_peak_rss_mb": peak_rss, "server_cpu_s": cpu_s, "server_cpu_us_per_chunk": cpu_us_per_chunk,
                 **dataclasses.asdict(settings)},
        notes=[f"{settings.sockets} sockets x {settings.replies} replies of {settings.max_tokens} tokens at "
               f"{settings.tpot_ms:g} ms/token ({settings.sockets * 1000 / settings.tpot_ms:,.0f} chunks/s at peak); "
               f"{sockets.replies_ok}/{expected} replies complete; max delay {_ms(sockets, 'max')} ms; "
               f"server RSS peak {peak_rss:.0f} MB; server CPU {cpu_us_per_chunk:.0f} µs per chunk relayed"],
    )
    return verdict, results


def _ms(result: ClientResult, name: str) -> str:
    return f"{result.delay_ms[name]:.1f}" if result.delay_ms else "-"


def _describe(result: ClientResult) -> str:
    text = (f"  {result.mode:<8} {result.connected} connected, {result.replies_ok} replies, {result.chunks} chunks, "
            f"delay p50 {_ms(result, 'p50')} p99 {_ms(result, 'p99')} max {_ms(result, 'max')} ms, "
            f"peak streaming {result.peak_streaming}, errors {result.errors}, "
            f"p99 by round {[round(p, 1) for p in result.p99_by_reply]}")
    if result.error_kinds:
        text += f" {result.error_kinds} {result.error_samples[:2]}"
    return text


if __name__ == "__main__":
    sys.exit(main())
