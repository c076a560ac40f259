"""core.streams: the consumer-group reader every control-plane ingest job uses, on the in-process stand-in and,
when REDIS_URL is set, on the real Redis (each test under a key prefix of its own, removed afterwards)."""

from __future__ import annotations

import os
import socket
import uuid

import fakeredis
import pytest
import redis
from django.conf import settings

from core.streams import GroupReader, consumer_name

_CLIENTS = ["stand-in", "redis"] if settings.REDIS_URL else ["stand-in"]


@pytest.fixture(params=_CLIENTS)
def client(request):
    if request.param == "redis":
        made = redis.Redis.from_url(settings.REDIS_URL, socket_timeout=5)
    else:
        made = fakeredis.FakeRedis(server=fakeredis.FakeServer())
    yield made
    made.close()


@pytest.fixture
def stream(client):
    prefix = f"{settings.REDIS_KEY_PREFIX}streams-test:{uuid.uuid4().hex}:"
    yield prefix + "events"
    keys = list(client.scan_iter(match=f"{prefix}*"))
    if keys:
        client.delete(*keys)


def _ids(entries) -> list[bytes]:
    return [entry_id for entry_id, _ in entries]


def _pending_of(client, stream: str, group: str) -> dict[bytes, int]:
    return {c["name"]: c["pending"] for c in client.xinfo_consumers(stream, group)}


def test_consumer_name_is_host_and_pid():
    assert consumer_name() == f"{socket.gethostname()}-{os.getpid()}"
    assert GroupReader(fakeredis.FakeRedis(), "s", "g").consumer == consumer_name()


def test_ensure_group_creates_the_stream_and_keeps_an_existing_group(client, stream):
    reader = GroupReader(client, stream, "g", "c1")
    reader.ensure_group()
    assert client.exists(stream) == 1
    assert [g["name"] for g in client.xinfo_groups(stream)] == [b"g"]
    client.xadd(stream, {b"e": b"1"})
    assert len(reader.read(10)) == 1
    reader.ensure_group()  # BUSYGROUP: kept as it was, not reset to the stream's start
    assert reader.read(10) == []
    assert client.xinfo_groups(stream)[0]["pending"] == 1


def test_ensure_group_raises_other_errors(client, stream):
    client.set(stream, "not a stream")
    with pytest.raises(redis.ResponseError, match="WRONGTYPE"):
        GroupReader(client, stream, "g", "c1").ensure_group()


def test_read_new_entries_then_own_unacknowledged_ones(client, stream):
    reader = GroupReader(client, stream, "g", "c1")
    reader.ensure_group()
    added = [client.xadd(stream, {b"e": str(n).encode()}) for n in range(5)]
    first = reader.read(3)
    assert _ids(first) == added[:3]
    assert [fields for _, fields in first] == [{b"e": b"0"}, {b"e": b"1"}, {b"e": b"2"}]
    assert _ids(reader.read(10)) == added[3:]
    assert reader.read(10) == []  # nothing new
    assert _ids(reader.read(10, start="0")) == added  # read, never acknowledged: handed back
    assert _ids(reader.read(2, start="0")) == added[:2]


def test_read_recreates_a_group_lost_with_a_restart(client, stream, request):
    reader = GroupReader(client, stream, "g", "c1")
    reader.ensure_group()
    if request.node.callspec.params["client"] == "redis":
        client.delete(stream)  # an empty Redis after a restart: no stream, no group
    else:
        # The stand-in answers XREADGROUP on a missing stream with another error than NOGROUP (and never
        # restarts); a destroyed group is its NOGROUP.
        client.xgroup_destroy(stream, "g")
    assert reader.read(10) == []  # NOGROUP: one empty read, never an error
    assert [g["name"] for g in client.xinfo_groups(stream)] == [b"g"]
    entry = client.xadd(stream, {b"e": b"x"})
    assert _ids(reader.read(10)) == [entry]


def test_read_raises_other_errors(client, stream):
    reader = GroupReader(client, stream, "g", "c1")
    reader.ensure_group()
    with pytest.raises(redis.ResponseError, match=r"(?i)invalid stream id"):
        reader.read(10, start="not-an-id")


def test_read_with_block_returns_empty_when_nothing_arrives(client, stream):
    reader = GroupReader(client, stream, "g", "c1")
    reader.ensure_group()
    assert reader.read(10, block_ms=20) == []


def test_a_deleted_but_unacknowledged_entry_comes_back_without_fields(client, stream):
    reader = GroupReader(client, stream, "g", "c1")
    reader.ensure_group()
    entry = client.xadd(stream, {b"e": b"x"})
    reader.read(10)
    client.xdel(stream, entry)
    [(entry_id, fields)] = reader.read(10, start="0")
    assert entry_id == entry and not fields


def test_claim_stale_takes_over_only_entries_idle_long_enough(client, stream):
    dead = GroupReader(client, stream, "g", "dead")
    dead.ensure_group()
    added = [client.xadd(stream, {b"e": str(n).encode()}) for n in range(3)]
    assert len(dead.read(10)) == 3
    alive = GroupReader(client, stream, "g", "alive")
    assert alive.claim_stale(3_600_000, 10) == []  # not idle for an hour: left alone
    claimed = alive.claim_stale(0, 2)
    assert _ids(claimed) == added[:2]
    assert claimed[0][1] == {b"e": b"0"}
    assert _pending_of(client, stream, "g") == {b"dead": 1, b"alive": 2}


def test_ack_deletes_by_default_and_keeps_the_entry_when_asked(client, stream):
    reader = GroupReader(client, stream, "g", "c1")
    reader.ensure_group()
    added = [client.xadd(stream, {b"e": str(n).encode()}) for n in range(3)]
    reader.read(10)
    reader.ack(added[:2])
    assert _ids(client.xrange(stream)) == added[2:]
    reader.ack([added[2]], delete=False)  # acknowledged, but something will still read it
    assert _ids(client.xrange(stream)) == added[2:]
    assert client.xinfo_groups(stream)[0]["pending"] == 0
    assert reader.read(10, start="0") == []


def test_batches_hand_over_claimed_then_own_pending_then_new_entries(client, stream):
    dead = GroupReader(client, stream, "g", "dead")
    reader = GroupReader(client, stream, "g", "c1")
    reader.ensure_group()
    stale = client.xadd(stream, {b"e": b"stale"})
    dead.read(1)
    mine = client.xadd(stream, {b"e": b"mine"})
    reader.read(1)  # read before a crash, never acknowledged
    new = [client.xadd(stream, {b"e": str(n).encode()}) for n in range(3)]
    seen = []
    for batch in reader.batches(count=1, claim_idle_ms=0):  # claims one (the oldest), then reads
        seen.append(_ids(batch))
        reader.ack(_ids(batch))
    assert seen == [[stale], [mine], *([n] for n in new)]
    assert client.xlen(stream) == 0
    assert _pending_of(client, stream, "g") == {b"dead": 0, b"c1": 0}


def test_batches_stop_after_max_batches_and_leave_the_rest(client, stream):
    reader = GroupReader(client, stream, "g", "c1")
    reader.ensure_group()
    added = [client.xadd(stream, {b"e": str(n).encode()}) for n in range(5)]
    batches = list(reader.batches(count=2, claim_idle_ms=60_000, max_batches=1))
    assert [_ids(b) for b in batches] == [added[:2]]
    assert client.xinfo_groups(stream)[0]["pending"] == 2  # not acknowledged by the caller: read again next time
    again = next(reader.batches(count=2, claim_idle_ms=60_000))
    assert _ids(again) == added[:2]


def test_batches_end_at_an_empty_read(client, stream):
    reader = GroupReader(client, stream, "g", "c1")
    reader.ensure_group()
    assert list(reader.batches(count=10, claim_idle_ms=0, block_ms=20)) == []
