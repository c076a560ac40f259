"""The playground: its console page, and its socket through the real ASGI application (origin check, session
authentication, the consumer) to the same dispatch as `/v1`, with the simulator as the replica."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from decimal import Decimal

import httpx
import orjson
import pytest
from asgiref.sync import sync_to_async
from django.conf import settings
from django.test import Client

from core import money
from core.keys import PLAYGROUND_KEY_ID
from tests.conftest import add_totp, ingested, sign_in


def _websocket_communicator():
    """Channels' WebsocketCommunicator. ``channels.testing``'s package module also imports its live-server test
    case, which needs daphne (we serve with uvicorn and don't install it); the communicator needs only asgiref,
    so its module is loaded without the package's."""
    import sys
    import types
    from pathlib import Path

    import channels

    if "channels.testing" not in sys.modules:
        try:
            import channels.testing  # daphne installed: the ordinary way
        except ImportError:
            package = types.ModuleType("channels.testing")
            package.__path__ = [str(Path(channels.__file__).parent / "testing")]
            sys.modules["channels.testing"] = package
    from channels.testing.websocket import WebsocketCommunicator

    return WebsocketCommunicator


WebsocketCommunicator = _websocket_communicator()

pytestmark = pytest.mark.django_db(transaction=True)
MODEL = "mistralai/Mistral-7B-Instruct-v0.3"
WAIT_S = 10.0


# --- fixtures ----------------------------------------------------------------------------------------
_SOCKETS: list = []  # every socket a test opened, closed after it (before its data plane stops)


@pytest.fixture
async def gateway(backend):
    """The process's data plane (the one the consumer calls), started in this test's event loop."""
    from inference.gateway.app import gateway as process_gateway

    await process_gateway.startup()
    await process_gateway.pool.wait_ready()
    try:
        yield process_gateway
    finally:
        while _SOCKETS:
            comm = _SOCKETS.pop()
            with contextlib.suppress(Exception, asyncio.CancelledError):  # closed already, or a test failed midway
                await comm.disconnect(timeout=WAIT_S)
        await _shut_down(process_gateway)


async def _shut_down(gw) -> None:
    """``gw.shutdown()``, cancelling again any background task whose cancellation was lost: one that lands
    inside a call to the in-process Redis stand-in is sometimes swallowed there, and the stop waiting for that
    task would wait for ever (seen in this suite about once in three runs; Redis itself is not involved)."""
    stopping = asyncio.create_task(gw.shutdown())
    while not (await asyncio.wait({stopping}, timeout=1))[0]:
        for task in asyncio.all_tasks():
            if task is not stopping and task is not asyncio.current_task() and task.cancelling():
                task.cancel()
    stopping.result()


def session_cookie(user) -> str:
    return sign_in(Client(), user).cookies[settings.SESSION_COOKIE_NAME].value


@pytest.fixture
def agent(acme, member_of):
    return member_of(acme, "agent", email="agent@acme.example")


@pytest.fixture
def agent_cookie(agent) -> str:
    return session_cookie(agent)


def socket(slug: str, cookie: str | None = None, *, origin: bytes = b"http://localhost") -> WebsocketCommunicator:
    from portal.asgi import application

    headers = [(b"host", b"localhost"), (b"origin", origin)]
    if cookie is not None:
        headers.append((b"cookie", f"{settings.SESSION_COOKIE_NAME}={cookie}".encode()))
    comm = WebsocketCommunicator(application, f"/ws/t/{slug}/playground/", headers=headers)
    _SOCKETS.append(comm)
    return comm


async def next_frame(comm: WebsocketCommunicator, timeout: float = WAIT_S) -> dict:
    """The next frame as a dict; a close comes back as ``{"type": "close", "code": ...}``."""
    message = await comm.receive_output(timeout)
    if message["type"] == "websocket.close":
        return {"type": "close", "code": message.get("code")}
    return orjson.loads(message["text"])


async def opened(slug: str, cookie: str | None) -> tuple[WebsocketCommunicator, dict]:
    """A connected socket and its first frame (``ready``, or the close that refused it)."""
    comm = socket(slug, cookie)
    connected, _ = await comm.connect(timeout=WAIT_S)
    assert connected
    return comm, await next_frame(comm)


async def ready(slug: str, cookie: str) -> WebsocketCommunicator:
    comm, first = await opened(slug, cookie)
    assert first["type"] == "ready", first
    return comm


def chat(turn: str = "t1", *, text: str = "Hello there", max_tokens: int = 8, **extra) -> dict:
    return {"type": "chat", "id": turn, "model": MODEL, "max_tokens": max_tokens, "temperature": 0.5,
            "messages": [{"role": "system", "content": "Be brief."}, {"role": "user", "content": text}], **extra}


async def reply(comm: WebsocketCommunicator, turn: str = "t1") -> tuple[list[dict], dict]:
    """The frames of one reply up to its done (or error) frame."""
    frames = []
    while True:
        frame = await next_frame(comm)
        assert frame["type"] != "close", frame
        frames.append(frame)
        if frame["type"] == "done" or (frame["type"] == "error" and frame["id"] == turn and
                                       not any(f["type"] == "start" for f in frames)):
            return frames, frame


async def usage_events(gw, request_id: str) -> list[dict]:
    """The usage events the data plane wrote for ``request_id`` (read from the Redis stream)."""
    from core.redis import get_redis

    def read() -> list[dict]:
        found = []
        for _id, fields in get_redis().xrange(settings.INFERENCE_USAGE_STREAM):
            for line in fields[b"e"].split(b"\n"):
                event = orjson.loads(line)
                if event["request_id"] == request_id:
                    found.append(event)
        return found

    # Polled, not flushed: a flush beside the emitter's own could write the same buffered events twice.
    deadline = time.monotonic() + WAIT_S
    while time.monotonic() < deadline:
        if await sync_to_async(read)():
            await asyncio.sleep(0.1)  # a second event, were there one, would have been written with the first
            return await sync_to_async(read)()
        await asyncio.sleep(0.02)
    return []


# --- the page ----------------------------------------------------------------------------------------
def test_the_page_offers_a_labelled_message_box_send_and_stop_and_loads_its_script(acme, agent, client):
    sign_in(client, agent)
    page = client.get(f"/t/{acme.slug}/playground/")
    assert page.status_code == 200
    html = page.content.decode()
    assert '<label for="pg-message">Message</label>' in html and 'id="pg-message"' in html
    assert ">Send</button>" in html and ">Stop</button>" in html
    assert "js/playground.js" in html and "<script>" not in html  # no inline script under the strict CSP
    assert f'data-socket-path="/ws/t/{acme.slug}/playground/"' in html
    assert "Content-Security-Policy" in page.headers


def test_the_console_links_the_playground_for_agents_but_not_for_the_billing_role(acme, agent, member_of, client):
    sign_in(client, agent)
    assert f'href="/t/{acme.slug}/playground/"' in client.get(f"/t/{acme.slug}/").content.decode()
    biller = member_of(acme, "billing")
    other = sign_in(Client(), biller)
    assert f'href="/t/{acme.slug}/playground/"' not in other.get(f"/t/{acme.slug}/").content.decode()
    assert other.get(f"/t/{acme.slug}/playground/").status_code == 403


def test_the_page_is_a_404_to_another_tenants_member_and_asks_strangers_to_sign_in(acme, bob, bluegum, client):
    sign_in(client, bob)
    assert client.get(f"/t/{acme.slug}/playground/").status_code == 404
    anonymous = Client().get(f"/t/{acme.slug}/playground/")
    assert anonymous.status_code == 302 and "/accounts/login/" in anonymous["Location"]


# --- who may connect ---------------------------------------------------------------------------------
async def test_a_socket_without_a_session_is_closed_as_not_signed_in(acme, gateway):
    _comm, first = await opened(acme.slug, None)
    assert first == {"type": "close", "code": 4401}


async def test_another_tenants_member_gets_not_found_whoever_they_are(acme, bluegum, bob, gateway, member_of):
    bob_cookie = await sync_to_async(session_cookie)(bob)  # the owner of Bluegum
    bluegum_agent = await sync_to_async(member_of)(bluegum, "agent", email="agent@bluegum.example")
    agent_cookie = await sync_to_async(session_cookie)(bluegum_agent)
    for cookie in (bob_cookie, agent_cookie):
        _comm, first = await opened(acme.slug, cookie)
        assert first == {"type": "close", "code": 4404}
    _comm, first = await opened("no-such-tenant", agent_cookie)
    assert first == {"type": "close", "code": 4404}  # the same answer: whether a tenant exists is not revealed


async def test_the_billing_role_is_forbidden_and_an_owner_needs_a_second_factor(acme, alice, gateway, member_of):
    biller = await sync_to_async(member_of)(acme, "billing")
    _comm, first = await opened(acme.slug, await sync_to_async(session_cookie)(biller))
    assert first == {"type": "close", "code": 4403}
    _comm, first = await opened(acme.slug, await sync_to_async(session_cookie)(alice))  # no authenticator yet
    assert first == {"type": "close", "code": 4403}
    await sync_to_async(add_totp)(alice)
    comm = await ready(acme.slug, await sync_to_async(session_cookie)(alice))
    await comm.disconnect()


async def test_a_socket_from_another_origin_is_refused_at_the_handshake(acme, agent_cookie, gateway):
    comm = socket(acme.slug, agent_cookie, origin=b"https://evil.example")
    connected, _ = await comm.connect(timeout=WAIT_S)
    assert not connected


async def test_ready_lists_the_served_models_with_their_prices(acme, agent_cookie, gateway):
    comm = socket(acme.slug, agent_cookie)
    await comm.connect(timeout=WAIT_S)
    first = await next_frame(comm)
    assert first["type"] == "ready" and first["tenant"] == acme.slug
    assert MODEL in [m["id"] for m in first["models"]]
    assert first["max_message_bytes"] == settings.INFERENCE_PLAYGROUND_MAX_MESSAGE_BYTES
    await comm.disconnect()


# --- a reply -----------------------------------------------------------------------------------------
@pytest.fixture
def paced(simulator):
    """The replica takes 10 ms per token, so a reply arrives token by token."""
    simulator.control(tpot_ms=10)
    yield
    simulator.control(tpot_ms=0)


async def test_tokens_stream_and_one_usage_event_bills_the_tenant_as_the_playground(acme, agent_cookie, gateway,
                                                                                   paced):
    comm = await ready(acme.slug, agent_cookie)
    await comm.send_to(text_data=orjson.dumps(chat(max_tokens=8)).decode())
    frames, done = await reply(comm)
    kinds = [f["type"] for f in frames]
    assert kinds[0] == "start" and kinds[-1] == "done" and kinds.count("delta") >= 2  # token by token
    assert "".join(f["content"] for f in frames if f["type"] == "delta")
    assert done["status"] == 200 and done["stopped"] is False and done["finish_reason"] == "length"
    assert done["completion_tokens"] == 8 and done["prompt_tokens"] > 0
    assert done["ttft_ms"] > 0 and done["total_ms"] >= done["ttft_ms"]
    caller = await gateway.auth.tenant_caller(str(acme.pk), key_id=PLAYGROUND_KEY_ID)
    cost = gateway.pool.cost_micro_aud(MODEL, done["prompt_tokens"], 8, caller.price_list)
    assert done["cost_aud"] == f"{cost / 1e6:.6f}"
    assert done["cost_shown"] == money.format_cost(Decimal(cost) / 1_000_000)
    [event] = await usage_events(gateway, done["request_id"])
    assert (event["tenant"], event["key_id"], event["status"]) == (str(acme.pk), PLAYGROUND_KEY_ID, 200)
    assert (event["prompt_tokens"], event["completion_tokens"]) == (done["prompt_tokens"], 8)
    await comm.disconnect()


async def test_the_usage_and_request_log_pages_show_playground_traffic_as_playground(acme, agent_cookie, gateway,
                                                                                    owner_client):
    comm = await ready(acme.slug, agent_cookie)
    await comm.send_to(text_data=orjson.dumps(chat(max_tokens=2)).decode())
    _frames, done = await reply(comm)
    await comm.disconnect()
    await usage_events(gateway, done["request_id"])
    [event] = await sync_to_async(ingested)(1)
    assert event.key_id == PLAYGROUND_KEY_ID
    log = await sync_to_async(owner_client.get)(f"/t/{acme.slug}/logs/")
    assert log.status_code == 200 and "Playground" in log.content.decode()
    assert "wtl_playground" not in log.content.decode()


async def test_stop_aborts_the_request_upstream_and_bills_what_ran(acme, agent_cookie, gateway, simulator):
    simulator.control(tpot_ms=25)
    try:
        disconnects = simulator.state()["counters"]["client_disconnects"]
        comm = await ready(acme.slug, agent_cookie)
        await comm.send_to(text_data=orjson.dumps(chat(max_tokens=400)).decode())
        deltas = 0
        while deltas < 3:
            frame = await next_frame(comm)
            deltas += frame["type"] == "delta"
        await comm.send_to(text_data=orjson.dumps({"type": "stop", "id": "t1"}).decode())
        _frames, done = await reply(comm)
        assert done["stopped"] is True and done["status"] == 499
        assert 0 < done["completion_tokens"] < 400 and done["prompt_tokens"] > 0
        deadline = time.monotonic() + WAIT_S
        while simulator.state()["counters"]["client_disconnects"] == disconnects and time.monotonic() < deadline:
            await asyncio.sleep(0.02)
        assert simulator.state()["counters"]["client_disconnects"] == disconnects + 1  # vLLM aborted it
        [event] = await usage_events(gateway, done["request_id"])
        assert event["client_disconnected"] is True and event["key_id"] == PLAYGROUND_KEY_ID
        assert event["completion_tokens"] == done["completion_tokens"] < 400
        await comm.disconnect()
    finally:
        simulator.control(tpot_ms=0)


async def test_a_second_message_while_a_reply_streams_is_refused_as_busy(acme, agent_cookie, gateway, simulator):
    simulator.control(tpot_ms=20)
    try:
        comm = await ready(acme.slug, agent_cookie)
        await comm.send_to(text_data=orjson.dumps(chat("t1", max_tokens=100)).decode())
        assert (await next_frame(comm))["type"] == "start"
        await comm.send_to(text_data=orjson.dumps(chat("t2")).decode())
        frame = await next_frame(comm)
        while frame["type"] == "delta":
            frame = await next_frame(comm)
        assert (frame["type"], frame["id"], frame["code"]) == ("error", "t2", "busy")
        await comm.send_to(text_data=orjson.dumps({"type": "stop"}).decode())
        _frames, done = await reply(comm)
        assert done["id"] == "t1" and done["stopped"] is True
        await comm.disconnect()
    finally:
        simulator.control(tpot_ms=0)


async def test_a_closed_tab_stops_the_reply_and_bills_it(acme, agent_cookie, gateway, simulator):
    simulator.control(tpot_ms=25)
    try:
        comm = await ready(acme.slug, agent_cookie)
        await comm.send_to(text_data=orjson.dumps(chat(max_tokens=400)).decode())
        start = await next_frame(comm)
        assert (await next_frame(comm))["type"] == "delta"
        await comm.disconnect()
        [event] = await usage_events(gateway, start["request_id"])
        assert event["client_disconnected"] is True and 0 < event["completion_tokens"] < 400
    finally:
        simulator.control(tpot_ms=0)


# --- the API's rules apply ---------------------------------------------------------------------------
@pytest.fixture
def one_request_a_minute(acme, django_capture_on_commit_callbacks):
    from billing.services import tenant_quota_set

    with django_capture_on_commit_callbacks(execute=True):
        tenant_quota_set(tenant=acme, rpm_limit=1)


async def test_an_over_limit_tenant_is_refused_with_the_apis_error(acme, agent_cookie, gateway, issue_key,
                                                                  one_request_a_minute):
    comm = await ready(acme.slug, agent_cookie)
    await comm.send_to(text_data=orjson.dumps(chat("t1", max_tokens=2)).decode())
    _frames, done = await reply(comm, "t1")
    assert done["status"] == 200  # the minute's one request
    key = await sync_to_async(issue_key)(acme)
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=gateway), base_url="http://localhost") as http:
        api = await http.post("/v1/chat/completions", headers={"Authorization": f"Bearer {key}"},
                              json={"model": MODEL, "messages": [{"role": "user", "content": "Hi"}], "max_tokens": 2})
    assert api.status_code == 429
    await comm.send_to(text_data=orjson.dumps(chat("t2", max_tokens=2)).decode())
    _frames, refused = await reply(comm, "t2")
    assert refused["type"] == "error" and refused["status"] == 429
    api_error = api.json()["error"]
    assert (refused["error"]["type"], refused["error"]["code"]) == (api_error["type"], api_error["code"])
    assert refused["retry_after"] == int(api.headers["retry-after"]) or refused["retry_after"] >= 1
    [event] = await usage_events(gateway, refused["request_id"])
    assert event["status"] == 429 and event["completion_tokens"] == 0 and event["key_id"] == PLAYGROUND_KEY_ID
    await comm.disconnect()


async def test_a_suspended_tenant_gets_the_apis_refusal_in_the_chat(acme, agent_cookie, gateway):
    from tenants.services import tenant_set_status

    comm = await ready(acme.slug, agent_cookie)
    await sync_to_async(tenant_set_status)(tenant=acme, status="suspended", reason="test")  # published on commit
    await asyncio.sleep(settings.INFERENCE_KEY_CACHE_TTL_S)  # the record cache's lifetime, as for API keys
    await comm.send_to(text_data=orjson.dumps(chat()).decode())
    _frames, refused = await reply(comm)
    assert (refused["type"], refused["status"], refused["code"]) == ("error", 402, "account_suspended")
    assert refused["error"]["type"] == "insufficient_quota"
    await comm.disconnect()


async def test_an_unpaid_tenant_gets_payment_required_in_the_chat(acme, agent_cookie, gateway):
    from core import contract
    from core.redis import get_redis

    raw = get_redis().get(contract.tenant_record_key(str(acme.pk)))
    record = contract.TenantRecord.decode(raw)
    unpaid = contract.TenantRecord(tenant=record.tenant, status="active", limits=record.limits,
                                   unpaid_after=time.time() - 1)
    get_redis().set(contract.tenant_record_key(str(acme.pk)), unpaid.encode())
    comm = await ready(acme.slug, agent_cookie)
    await comm.send_to(text_data=orjson.dumps(chat()).decode())
    _frames, refused = await reply(comm)
    assert (refused["status"], refused["code"]) == (402, "payment_required")
    await comm.disconnect()


async def test_an_invalid_body_gets_the_apis_validation_error(acme, agent_cookie, gateway):
    comm = await ready(acme.slug, agent_cookie)
    await comm.send_to(text_data=orjson.dumps(chat(temperature=9)).decode())
    _frames, refused = await reply(comm)
    assert refused["status"] == 400 and refused["error"]["param"] == "temperature"
    await comm.send_to(text_data=orjson.dumps(chat("t2", model="no-such-model")).decode())
    _frames, refused = await reply(comm, "t2")
    assert refused["status"] == 404 and refused["code"] == "model_not_found"
    await comm.disconnect()


# --- robustness --------------------------------------------------------------------------------------
async def test_a_removed_member_is_cut_off_at_their_next_frame(acme, agent, agent_cookie, gateway):
    from tenants.models import Membership
    from tenants.services import member_remove

    comm = await ready(acme.slug, agent_cookie)
    await comm.send_to(text_data='{"type": "ping"}')
    assert (await next_frame(comm))["type"] == "pong"
    membership = await Membership.objects.aget(tenant=acme, user=agent)
    await sync_to_async(member_remove)(membership=membership)
    await comm.send_to(text_data='{"type": "ping"}')
    assert await next_frame(comm) == {"type": "close", "code": 4403}


async def test_a_demoted_member_is_cut_off_mid_reply_and_the_reply_is_stopped(acme, agent, agent_cookie, gateway,
                                                                             simulator):
    from tenants.models import Membership

    simulator.control(tpot_ms=25)
    try:
        comm = await ready(acme.slug, agent_cookie)
        await comm.send_to(text_data=orjson.dumps(chat(max_tokens=400)).decode())
        start = await next_frame(comm)
        await Membership.objects.filter(tenant=acme, user=agent).aupdate(role="billing")
        await comm.send_to(text_data='{"type": "ping"}')
        frame = await next_frame(comm)
        while frame["type"] == "delta":
            frame = await next_frame(comm)
        assert frame == {"type": "close", "code": 4403}
        [event] = await usage_events(gateway, start["request_id"])
        assert event["client_disconnected"] is True and event["completion_tokens"] < 400
    finally:
        simulator.control(tpot_ms=0)


async def test_a_signed_out_session_is_cut_off(acme, agent_cookie, gateway):
    from django.contrib.sessions.backends.db import SessionStore

    comm = await ready(acme.slug, agent_cookie)
    await sync_to_async(SessionStore(agent_cookie).delete)()
    await comm.send_to(text_data='{"type": "ping"}')
    assert await next_frame(comm) == {"type": "close", "code": 4401}


async def test_an_oversized_frame_is_refused_and_the_socket_stays_usable(acme, agent_cookie, gateway):
    comm = await ready(acme.slug, agent_cookie)
    big = chat(text="x" * settings.INFERENCE_PLAYGROUND_MAX_MESSAGE_BYTES)
    await comm.send_to(text_data=orjson.dumps(big).decode())
    refused = await next_frame(comm)
    assert (refused["type"], refused["status"], refused["code"]) == ("error", 413, "message_too_large")
    await comm.send_to(text_data='{"type": "ping"}')
    assert (await next_frame(comm))["type"] == "pong"
    await comm.disconnect()


async def test_frames_faster_than_the_allowance_are_refused_and_a_flood_is_closed(acme, agent_cookie, gateway,
                                                                                 settings):
    settings.INFERENCE_PLAYGROUND_RATE = 0.01  # so the bucket does not refill during the test
    settings.INFERENCE_PLAYGROUND_BURST = 3
    comm = await ready(acme.slug, agent_cookie)
    for _ in range(3):
        await comm.send_to(text_data='{"type": "ping"}')
        assert (await next_frame(comm))["type"] == "pong"
    await comm.send_to(text_data='{"type": "ping"}')
    refused = await next_frame(comm)
    assert (refused["status"], refused["code"]) == (429, "rate_limit_exceeded") and refused["retry_after"] >= 1
    for _ in range(18):
        await comm.send_to(text_data='{"type": "ping"}')
        assert (await next_frame(comm))["code"] == "rate_limit_exceeded"
    await comm.send_to(text_data='{"type": "ping"}')  # the twentieth refusal in a row
    assert await next_frame(comm) == {"type": "close", "code": 4429}


@pytest.mark.parametrize(("frame", "code"), [
    ("not json", "invalid_json"),
    ("[1, 2]", "invalid_json"),
    ('{"type": "dance"}', "unknown_type"),
    ('{"type": "chat", "id": "' + "x" * 65 + '"}', "invalid_id"),
    ('{"type": "chat", "id": "t1", "model": "m", "messages": "hi"}', None),
    ('{"type": "chat", "id": "t1", "model": "m", "messages": [{"role": "tool", "content": "x"}]}', None),
    ('{"type": "chat", "id": "t1", "model": {"a": 1}, "messages": []}', None),
])
async def test_a_malformed_frame_gets_an_error_frame_never_a_crash(acme, agent_cookie, gateway, frame, code):
    comm = await ready(acme.slug, agent_cookie)
    await comm.send_to(text_data=frame)
    refused = await next_frame(comm)
    assert refused["type"] == "error" and refused["status"] == 400
    if code is not None:
        assert refused["code"] == code
    assert len(refused["message"]) < 200  # bounded: nothing the client sent is echoed at length
    await comm.send_to(bytes_data=b"\x00\x01")
    assert (await next_frame(comm))["code"] == "invalid_json"
    await comm.send_to(text_data='{"type": "ping"}')
    assert (await next_frame(comm))["type"] == "pong"
    await comm.disconnect()


# --- isolation ---------------------------------------------------------------------------------------
async def test_two_tenants_streaming_at_once_each_receive_only_their_own_reply(acme, bluegum, agent_cookie,
                                                                              member_of, gateway, simulator):
    bluegum_agent = await sync_to_async(member_of)(bluegum, "agent", email="bluegum-agent@bluegum.example")
    bluegum_cookie = await sync_to_async(session_cookie)(bluegum_agent)
    simulator.control(tpot_ms=5)
    try:
        ours, theirs = await ready(acme.slug, agent_cookie), await ready(bluegum.slug, bluegum_cookie)
        # The same turn id on both sockets: only the request ids could tell the replies apart.
        await ours.send_to(text_data=orjson.dumps(chat("t1", max_tokens=20)).decode())
        await theirs.send_to(text_data=orjson.dumps(chat("t1", max_tokens=12)).decode())
        (ours_frames, ours_done), (their_frames, their_done) = await asyncio.gather(reply(ours), reply(theirs))
        assert {f.get("request_id") for f in ours_frames if f.get("request_id")} == {ours_done["request_id"]}
        assert {f.get("request_id") for f in their_frames if f.get("request_id")} == {their_done["request_id"]}
        assert ours_done["request_id"] != their_done["request_id"]
        assert (ours_done["completion_tokens"], their_done["completion_tokens"]) == (20, 12)
        [ours_event] = await usage_events(gateway, ours_done["request_id"])
        [their_event] = await usage_events(gateway, their_done["request_id"])
        assert (ours_event["tenant"], their_event["tenant"]) == (str(acme.pk), str(bluegum.pk))
        for comm in (ours, theirs):
            assert await comm.receive_nothing(timeout=0.2)  # nothing more arrives on either socket
            await comm.disconnect()
    finally:
        simulator.control(tpot_ms=0)


async def test_nothing_anyone_typed_or_the_model_said_reaches_the_logs(acme, agent_cookie, gateway, caplog):
    secret = "zebra-sentinel-4821"
    caplog.set_level(logging.DEBUG)
    comm = await ready(acme.slug, agent_cookie)
    await comm.send_to(text_data=orjson.dumps(chat(text=f"My card is {secret}", max_tokens=4)).decode())
    frames, _done = await reply(comm)
    said = "".join(f["content"] for f in frames if f["type"] == "delta")
    await comm.send_to(text_data=f'{{"type": "chat", "id": "{secret}!"}}')  # malformed, with the secret in it
    assert (await next_frame(comm))["code"] == "invalid_id"
    await comm.disconnect()
    logged = caplog.text
    assert secret not in logged and said not in logged


# --- customer-conversation mode ----------------------------------------------------------------------
async def test_customer_conversation_mode_tells_the_model_the_channel_and_language(acme, agent_cookie, gateway):
    comm = await ready(acme.slug, agent_cookie)
    await comm.send_to(text_data=orjson.dumps(chat("plain", max_tokens=2)).decode())
    _frames, plain = await reply(comm, "plain")
    mode = {"channel": "whatsapp", "language": "en-AU", "customer_id": "cust-00042"}
    await comm.send_to(text_data=orjson.dumps(chat("sim", max_tokens=2, ccaas=mode)).decode())
    _frames, simulated = await reply(comm, "sim")
    assert simulated["status"] == 200
    # The same conversation, with the channel's instruction ahead of the system prompt: a longer prompt, billed.
    assert simulated["prompt_tokens"] > plain["prompt_tokens"]
    [event] = await usage_events(gateway, simulated["request_id"])
    assert event["prompt_tokens"] == simulated["prompt_tokens"] and event["key_id"] == PLAYGROUND_KEY_ID


@pytest.mark.parametrize(("mode", "param"), [
    ({"channel": "pigeon"}, "ccaas.channel"),
    ({"language": "not a language"}, "ccaas.language"),
    ({"customer_id": "x" * 65}, "ccaas.customer_id"),
    ({"customer_id": "<script>"}, "ccaas.customer_id"),
    ("whatsapp", "ccaas"),
])
async def test_customer_conversation_fields_are_validated(acme, agent_cookie, gateway, mode, param):
    comm = await ready(acme.slug, agent_cookie)
    await comm.send_to(text_data=orjson.dumps(chat(ccaas=mode)).decode())
    refused = await next_frame(comm)
    assert (refused["type"], refused["status"], refused["error"]["param"]) == ("error", 400, param)


def test_the_page_offers_the_customer_conversation_settings(acme, agent, client):
    sign_in(client, agent)
    html = client.get(f"/t/{acme.slug}/playground/").content.decode()
    assert '<option value="whatsapp">WhatsApp</option>' in html and 'value="en-AU"' in html
    assert '<label for="pg-customer">Customer id</label>' in html


async def test_a_customer_id_is_neither_sent_to_the_model_nor_logged(acme, agent_cookie, gateway, caplog):
    from inference.playground import parse_frame

    customer = "cust-sentinel-77413"
    frame = chat(ccaas={"channel": "sms", "customer_id": customer})
    assert customer not in orjson.dumps(parse_frame(orjson.dumps(frame).decode()).payload).decode()
    caplog.set_level(logging.DEBUG)
    comm = await ready(acme.slug, agent_cookie)
    await comm.send_to(text_data=orjson.dumps(frame).decode())
    _frames, done = await reply(comm)
    assert done["status"] == 200
    await comm.disconnect()
    assert customer not in caplog.text
