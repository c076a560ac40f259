"""docs/conversations.md's shell examples run when pasted: each ``sh`` block, against the live gateway and the
simulator (the docs' base URL and key swapped for the test's), does what the page says."""

from __future__ import annotations

import json
import re
import subprocess
from pathlib import Path

import orjson
import pytest

DOC = Path(__file__).resolve().parents[2] / "docs" / "conversations.md"

pytestmark = pytest.mark.django_db(transaction=True)


def _blocks() -> list[str]:
    return re.findall(r"```sh\n(.*?)```", DOC.read_text(), flags=re.S)


def _run(script: str, server, key: str) -> str:
    script = script.replace("http://127.0.0.1:8000", server.base_url).replace("'wtl_…'", f"'{key}'")
    done = subprocess.run(["bash", "-e", "-c", script], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    return done.stdout


def _documents(text: str) -> list[dict]:
    """The JSON documents curl printed one after another (no newline between them)."""
    decoder, out, at = json.JSONDecoder(), [], 0
    while at < len(text):
        if text[at].isspace():
            at += 1
            continue
        document, at = decoder.raw_decode(text, at)
        out.append(document)
    return out


def test_the_examples_run_when_pasted(gateway_ready, acme, issue_key):
    key = issue_key(acme)
    first, second = _blocks()[:2]
    answer = orjson.loads(_run(first, gateway_ready, key))
    assert answer["object"] == "conversation.turn" and answer["conversation_id"].startswith("conv_")
    assert answer["sentiment"]["label"] == "neutral" and answer["escalate"]["flag"] is False
    outputs = _documents(_run(f"export WATTLE_KEY='{key}'\n" + second, gateway_ready, key))
    turn, shown, closed = outputs
    assert turn["escalate"] == {"flag": True, "reason": "trigger_phrase"}
    assert shown["status"] == "open" and len(shown["turns"]) == 4 and shown["escalation"]["flag"] is True
    assert closed["status"] == "closed"
