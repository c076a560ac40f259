"""P12: the conversation API's added latency. One client, one request at a time, through one gateway worker and
the simulator (no model delay): a conversation turn (``POST /v1/conversation``) against the plain chat completion
it makes (``POST /v1/chat/completions`` with the very same messages: the channel's instruction, the earlier turns
and the message), alternating A/B and B/A, so what differs is only what the conversation API adds: reading and
writing the state under the conversation's lock, scoring the customer's sentiment, the escalation decision and
its bookkeeping. Conversations run four turns, then are closed and a new one starts (the close is not timed).

Also, in-process: the lexicon scorer's median time per customer turn over the labelled contact-centre set
(``tests/core/data``), the part of the added latency the issue bounds ("under a few milliseconds").
"""

from __future__ import annotations

import statistics
import time
from pathlib import Path

import httpx

from bench.scenarios import NO_DELAY, Verdict

P12_TITLE = "conversation API: a turn against the same chat completion, one at a time"
P12_TARGET = "added p50 <= 5 ms; lexicon scoring p50 <= 1 ms"
MAX_ADDED_P50_MS = 5.0
MAX_LEXICON_P50_MS = 1.0
MODEL = "mistralai/Mistral-7B-Instruct-v0.3"
_TURNS_PER_CONVERSATION = 4
_MESSAGES = [
    "/echo Hi, I'm calling about my bill, it's higher than usual.",
    "/echo The account number is on the letter, hang on.",
    "/echo I've been on hold for ages and I'm not happy about it.",
    "/echo Okay, thanks, that's sorted it. Cheers.",
]
_DATA = Path(__file__).resolve().parent.parent / "tests" / "core" / "data" / "contact_centre_sentiment.tsv"


def lexicon_p50_ms(repeats: int) -> float:
    from core import sentiment

    texts = [line.split("\t", 1)[1] for line in _DATA.read_text().splitlines()
             if line.strip() and not line.startswith("#")]
    samples = []
    for _ in range(repeats):
        for text in texts:
            started = time.perf_counter()
            sentiment.score(text)
            samples.append((time.perf_counter() - started) * 1000)
    return statistics.median(samples)


def _pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(len(ordered) * q / 100))]


def run(env, *, pairs: int, log) -> Verdict:
    from core import ccaas

    gateway = env.start_gateway(1)
    env.simulator_control(**NO_DELAY)
    headers = {"authorization": f"Bearer {env.api_key}"}
    system = {"role": "system", "content": ccaas.Context().instruction()}
    conversation_ms: list[float] = []
    chat_ms: list[float] = []
    conversation_overhead: list[float] = []
    chat_overhead: list[float] = []
    errors = 0
    with httpx.Client(base_url=gateway.base_url, headers=headers, timeout=30) as client:
        cid = None
        history: list[dict] = []
        for n in range(pairs + 4):  # the first four warm up
            if n % _TURNS_PER_CONVERSATION == 0:
                if cid is not None:
                    client.post(f"/v1/conversations/{cid}/close")
                cid, history = None, []
            message = _MESSAGES[n % len(_MESSAGES)]
            turn = {"message": message, **({"conversation_id": cid} if cid else {"model": MODEL})}
            chat = {"model": MODEL, "messages": [system, *history, {"role": "user", "content": message}]}
            timings = {}
            order = ("conversation", "chat") if n % 2 == 0 else ("chat", "conversation")
            for kind in order:
                started = time.perf_counter()
                answer = client.post("/v1/conversation" if kind == "conversation" else "/v1/chat/completions",
                                     json=turn if kind == "conversation" else chat)
                timings[kind] = ((time.perf_counter() - started) * 1000, answer)
            (conv_ms, conv), (plain_ms, plain) = timings["conversation"], timings["chat"]
            if conv.status_code != 200 or plain.status_code != 200:
                errors += 1
                cid = None
                continue
            cid = conv.json()["conversation_id"]
            reply = conv.json()["reply"]
            history += [{"role": "user", "content": message}, {"role": "assistant", "content": reply}]
            if n < 4:
                continue
            conversation_ms.append(conv_ms)
            chat_ms.append(plain_ms)
            conversation_overhead.append(float(conv.headers.get("x-wattle-overhead-ms", "nan")))
            chat_overhead.append(float(plain.headers.get("x-wattle-overhead-ms", "nan")))
        if cid is not None:
            client.post(f"/v1/conversations/{cid}/close")
    lexicon_ms = lexicon_p50_ms(5)
    c50, p50 = statistics.median(conversation_ms), statistics.median(chat_ms)
    added_p50 = c50 - p50
    added_pairs = statistics.median([c - p for c, p in zip(conversation_ms, chat_ms, strict=True)])
    log(f"  chat completion p50 {p50:.2f} ms (p99 {_pct(chat_ms, 99):.2f}); conversation turn p50 {c50:.2f} ms "
        f"(p99 {_pct(conversation_ms, 99):.2f}); added p50 {added_p50:+.2f} ms (per pair {added_pairs:+.2f} ms)")
    log(f"  gateway's own overhead header p50: chat {statistics.median(chat_overhead):.2f} ms, conversation "
        f"{statistics.median(conversation_overhead):.2f} ms; lexicon scoring p50 {lexicon_ms * 1000:.1f} µs")
    return Verdict(
        scenario="P12", workers=1, target=P12_TARGET,
        direct=f"chat p50 {p50:.2f} ms",
        gateway=f"turn p50 {c50:.2f} ms",
        comparison=f"+{added_p50:.2f} ms; lexicon {lexicon_ms * 1000:.0f} µs",
        passed=errors == 0 and added_p50 <= MAX_ADDED_P50_MS and lexicon_ms <= MAX_LEXICON_P50_MS,
        metrics={"pairs": len(conversation_ms), "errors": errors, "chat_p50_ms": p50, "turn_p50_ms": c50,
                 "added_p50_ms": added_p50, "added_per_pair_p50_ms": added_pairs,
                 "chat_overhead_p50_ms": statistics.median(chat_overhead),
                 "turn_overhead_p50_ms": statistics.median(conversation_overhead), "lexicon_p50_ms": lexicon_ms},
        notes=[f"{len(conversation_ms)} pairs, {errors} errors; turn vs chat per pair p50 {added_pairs:+.2f} ms"],
    )
