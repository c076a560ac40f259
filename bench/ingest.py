"""P7: usage events from the Redis stream into PostgreSQL through ``billing.services.usage_ingest``.

The events have the gateway's shape (``Gateway._settle``) and go into the stream the way its emitter writes
them (``XADD <stream> * e <json>``); only the drain is timed. Needs Django set up (``BenchEnvironment``).
"""

from __future__ import annotations

import dataclasses
import secrets
import time
from dataclasses import dataclass

import orjson

from bench.environment import BACKEND_NAME, MODEL
from bench.scenarios import P7_TARGET, Verdict

TARGET_EVENTS_PER_S = 20_000


@dataclass
class IngestRound:
    events: int
    seconds: float
    handled: int
    stored: int
    left_in_stream: int
    pending: int

    @property
    def events_per_s(self) -> float:
        return self.stored / self.seconds if self.seconds > 0 else 0.0

    @property
    def lost(self) -> int:
        return self.events - self.stored


def _event(request_id: str, tenant_id: str, key_id: str, now: float, n: int) -> bytes:
    stream = n % 2 == 0
    return orjson.dumps(
        {
            "request_id": request_id,
            "tenant": tenant_id,
            "key_id": key_id,
            "endpoint": "chat.completions",
            "model": MODEL,
            "backend": BACKEND_NAME,
            "status": 200,
            "error_code": "",
            "stream": stream,
            "client_disconnected": False,
            "prompt_tokens": 110,
            "completion_tokens": 16 + n % 48,
            "ttft_ms": 1.5 if stream else 1.2,
            "duration_ms": 3.2,
            "created": now - (n % 1000) / 1000,
        }
    )


def run_round(events: int, *, tenant_id: str, key_id: str) -> IngestRound:
    from django.conf import settings

    from billing.models import UsageEvent
    from billing.services import INGEST_GROUP, usage_ingest
    from core.redis import get_redis

    client = get_redis()
    stream = settings.INFERENCE_USAGE_STREAM
    client.delete(stream)  # only this round's events (the group is recreated by the ingest)
    prefix = f"bench-p7-{secrets.token_hex(4)}-"
    now = time.time()
    for start in range(0, events, 2000):
        pipe = client.pipeline(transaction=False)
        for n in range(start, min(events, start + 2000)):
            pipe.xadd(stream, {"e": _event(f"{prefix}{n}", tenant_id, key_id, now, n)})
        pipe.execute()
    started = time.perf_counter()
    handled = usage_ingest()
    seconds = time.perf_counter() - started
    stored = UsageEvent.objects.filter(request_id__startswith=prefix).count()
    left = client.xlen(stream)
    pending = client.xpending(stream, INGEST_GROUP)["pending"]
    # The bench's own rows only: its database is left as it was found.
    UsageEvent.objects.filter(request_id__startswith=prefix).delete()
    client.delete(stream)
    return IngestRound(events=events, seconds=seconds, handled=handled, stored=stored, left_in_stream=left,
                       pending=pending)  # fmt: skip


def judge(rounds: list[IngestRound]) -> Verdict:
    rates = sorted(r.events_per_s for r in rounds)
    median = rates[len(rates) // 2] if len(rates) % 2 else sum(rates[len(rates) // 2 - 1 : len(rates) // 2 + 1]) / 2
    lost = sum(r.lost for r in rounds)
    leftover = sum(r.left_in_stream + r.pending for r in rounds)
    passed = median >= TARGET_EVENTS_PER_S and lost == 0 and leftover == 0
    return Verdict(
        scenario="P7",
        workers=0,
        target=P7_TARGET,
        direct="-",
        gateway=f"{median:,.0f} events/s",
        comparison=f"{lost} lost of {sum(r.events for r in rounds):,}",
        passed=passed,
        metrics={
            "events_per_s": median,
            "rounds": [{**dataclasses.asdict(r), "events_per_s": r.events_per_s} for r in rounds],
            "lost": lost,
        },
        notes=[f"rounds: {', '.join(f'{r.events_per_s:,.0f}/s' for r in rounds)}; stream left {leftover}"],
    )
