"""P8: personal-information redaction (``core.redaction``), in-process: milliseconds per KB of prompt text at p50,
and the gateway's added CPU for a redacted chat request (redact the messages, re-encode the body) over an unchanged
one (the client's bytes with the salt spliced in).

Texts: the labelled corpus's sentences (``tests/inference/redaction_corpus.py``: an identifier in every sentence,
the worst case) and a contact-centre transcript with a few identifiers per KB (the everyday case), each at 4 and
32 KB. The target is judged on the corpus text.
"""

from __future__ import annotations

import statistics
import time

import orjson

from bench.scenarios import Verdict

P8_TARGET = "p50 <= 0.2 ms per KB"
P8_TITLE = "PII redaction, ms per KB of prompt"
TARGET_MS_PER_KB = 0.2

_TRANSCRIPT_TURNS = [
    "Agent: Thanks for calling Bluegum Energy, you're speaking with Priya. How can I help today?",
    "Customer: Hi, I got a bill that's much higher than usual and I don't understand why.",
    "Agent: I'm sorry to hear that. Let me pull up the account. Can I confirm your full name and address?",
    "Customer: Sure, it's Sam Nguyen, 14 Wattle Street, Parramatta.",
    "Agent: Thank you. I can see the last reading was an estimate, which can make a bill look higher than it is.",
    "Customer: That makes sense. The meter is behind a locked gate, so they probably couldn't read it.",
    "Agent: I'll book an actual read and put a hold on the bill until then, so there is nothing to pay yet.",
    "Customer: Great. You can reach me on 0412 345 678 if the reader can't get in.",
    "Agent: Noted. Is sam.nguyen@example.com.au still the best email for the confirmation?",
    "Customer: Yes. Also, can I set up a payment plan for the next bill? Money is tight this month.",
    "Agent: Absolutely, we can split it over three months at no extra cost. I'll send the details by email.",
    "Customer: Thanks, that's really helpful. My concession card number is on file, isn't it?",
    "Agent: It is, and the discount has been applied. Is there anything else I can help with today?",
    "Customer: No, that's everything. Thanks for your patience.",
]


def _texts() -> dict[str, str]:
    from tests.inference.redaction_corpus import LOOKALIKES, VALID

    corpus = "\n".join([s for _, _, s in VALID] + [s for _, s in LOOKALIKES[: len(VALID) // 2]])
    transcript = "\n".join(_TRANSCRIPT_TURNS)
    out = {}
    for name, source in (("corpus", corpus), ("transcript", transcript)):
        for kb in (4, 32):
            text = (source + "\n") * (kb * 1024 // len(source.encode()) + 1)
            out[f"{name} {kb} KB"] = text.encode()[: kb * 1024].decode(errors="ignore")
    return out


def _median_ms(fn, repeats: int) -> float:
    samples = []
    for _ in range(repeats):
        started = time.perf_counter()
        fn()
        samples.append((time.perf_counter() - started) * 1000)
    return statistics.median(samples)


def _request_cpu_ms(text: str, repeats: int) -> tuple[float, float]:
    """(unchanged, redacted) CPU ms of turning a validated chat request into the upstream body."""
    from core.redaction import REDACT
    from inference.gateway import redact, validation
    from inference.gateway.exchange import RequestContext

    payload = {"model": "m", "messages": [{"role": "user", "content": text}], "max_tokens": 64}
    body = orjson.dumps(payload)

    def unchanged() -> None:
        validation.splice_fields(body, {"cache_salt": "0" * 32})

    def redacted() -> None:
        prepared = validation.Prepared(orjson.loads(body), False, len(body), 64, 1)
        ctx = RequestContext("chat.completions", "req_bench")
        redact.apply(ctx, prepared, mode=REDACT)
        prepared.payload["cache_salt"] = "0" * 32
        orjson.dumps(prepared.payload)

    def parse_only() -> None:
        orjson.loads(body)  # the gateway parses the body either way: not added by redaction

    base = _median_ms(unchanged, repeats)
    return base, max(0.0, _median_ms(redacted, repeats) - _median_ms(parse_only, repeats))


def run(*, repeats: int, log) -> Verdict:
    from core.redaction import Redactor

    rows = []
    for name, text in _texts().items():
        kb = len(text.encode()) / 1024
        redactor_counts = Redactor()
        redactor_counts.redact(text)
        ms = _median_ms(lambda text=text: Redactor().redact(text), repeats)
        unchanged_ms, redacted_ms = _request_cpu_ms(text, max(5, repeats // 2))
        row = {"text": name, "kb": round(kb, 1), "p50_ms": ms, "p50_ms_per_kb": ms / kb,
               "replacements": sum(redactor_counts.counts.values()),
               "request_unchanged_ms": unchanged_ms, "request_redacted_ms": redacted_ms}
        rows.append(row)
        log(f"  {name:<16} p50 {ms:7.3f} ms = {ms / kb:6.3f} ms/KB ({row['replacements']} replaced); chat request "
            f"body: unchanged {unchanged_ms:.3f} ms, redacted +{redacted_ms:.3f} ms CPU")
    judged = [r for r in rows if r["text"].startswith("corpus")]
    worst = max(judged, key=lambda r: r["p50_ms_per_kb"])
    everyday = max((r for r in rows if r["text"].startswith("transcript")), key=lambda r: r["p50_ms_per_kb"])
    return Verdict(
        scenario="P8", workers=0, target=P8_TARGET,
        direct=f"transcript {everyday['p50_ms_per_kb']:.3f} ms/KB",
        gateway=f"corpus {worst['p50_ms_per_kb']:.3f} ms/KB ({worst['text']})",
        comparison=f"redacted 32 KB chat +{max(r['request_redacted_ms'] for r in judged):.2f} ms CPU",
        passed=worst["p50_ms_per_kb"] <= TARGET_MS_PER_KB,
        metrics={"rows": rows},
        notes=[f"{r['text']}: {r['p50_ms_per_kb']:.3f} ms/KB" for r in rows],
    )
