"""Reading a Redis stream through a consumer group, the way every control-plane ingest job does.

At-least-once delivery: an entry is acknowledged (and usually deleted) only after the caller has committed what it
read; entries this consumer read but never acknowledged (the database was down) come back first; entries a dead
consumer held are taken over once idle long enough. The group is (re-)created as needed, so a Redis that restarted
empty costs one empty read, never an error.

Django-free (``core`` imports no app): the caller passes the client, the stream, the group and its numbers.
"""

from __future__ import annotations

import os
import socket
from collections.abc import Iterator, Sequence

import redis

Entry = tuple[bytes | str, dict | None]


def consumer_name() -> str:
    """This process's consumer name within a group: host and pid, so each worker holds its own pending entries."""
    return f"{socket.gethostname()}-{os.getpid()}"


class GroupReader:
    """One consumer of one group on one stream."""

    def __init__(self, client: redis.Redis, stream: str, group: str, consumer: str | None = None) -> None:
        self.client = client
        self.stream = stream
        self.group = group
        self.consumer = consumer or consumer_name()

    def ensure_group(self) -> None:
        """Create the group (and the stream) from the start of the stream; an existing group is kept."""
        try:
            self.client.xgroup_create(self.stream, self.group, id="0", mkstream=True)
        except redis.ResponseError as exc:
            if "BUSYGROUP" not in str(exc):
                raise

    def read(self, count: int, block_ms: int | None = None, *, start: str = ">") -> list[Entry]:
        """Up to ``count`` entries: new ones (``start=">"``, waiting up to ``block_ms`` when given), or this
        consumer's own unacknowledged ones (``start="0"``). Entries already deleted come back with no fields."""
        try:
            response = self.client.xreadgroup(
                self.group, self.consumer, {self.stream: start}, count=count, block=block_ms
            )
        except redis.ResponseError as exc:
            if "NOGROUP" not in str(exc):
                raise
            self.ensure_group()  # Redis restarted empty: the group went with the stream
            return []
        return [(entry_id, fields) for _stream, entries in (response or []) for entry_id, fields in entries]

    def claim_stale(self, min_idle_ms: int, count: int) -> list[Entry]:
        """Take over up to ``count`` entries another consumer has held unacknowledged for ``min_idle_ms``."""
        _next, claimed, *_ = self.client.xautoclaim(
            self.stream, self.group, self.consumer, min_idle_time=min_idle_ms, start_id="0-0", count=count
        )
        return claimed

    def ack(self, ids: Sequence[bytes | str], delete: bool = True) -> None:
        """Acknowledge ``ids`` and, unless ``delete`` is false (something will still read the entry), delete them
        from the stream, in one round trip."""
        pipe = self.client.pipeline(transaction=False)
        pipe.xack(self.stream, self.group, *ids)
        if delete:
            pipe.xdel(self.stream, *ids)
        pipe.execute()

    def batches(self, *, count: int, claim_idle_ms: int, block_ms: int | None = None,
                max_batches: int | None = None) -> Iterator[list[Entry]]:
        """Batches to handle, in order: entries taken over from a dead consumer (looked for once), then this
        consumer's own unacknowledged ones, then new ones. Ends at the first empty read or after ``max_batches``.
        The caller acknowledges each batch (``ack``) after committing it, before asking for the next. The group
        must exist already (``ensure_group``)."""
        claimed = self.claim_stale(claim_idle_ms, count)
        done = 0
        while True:
            pending = claimed or self.read(count, start="0") or self.read(count, block_ms)
            claimed = []
            if not pending:
                return
            yield pending
            done += 1
            if max_batches is not None and done >= max_batches:
                return
