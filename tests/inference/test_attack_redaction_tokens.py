"""R-RED-1 under attack: a prompt sent as token ids cannot be read for identifiers, so with redaction on it is
refused (400) rather than passed to the replica unredacted; text prompts are redacted as before."""

from __future__ import annotations

import pytest

from core import redaction
from inference.gateway import redact, validation
from inference.gateway.errors import GatewayError
from inference.gateway.exchange import RequestContext

TFN_TOKENS = [1, 1032, 1266, 1032, 1049, 1050, 1051]


def _prepared(endpoint: str, payload: dict):
    return validation.PREPARERS[endpoint](payload)


@pytest.mark.parametrize(("endpoint", "payload"), [
    ("completions", {"model": "m", "prompt": TFN_TOKENS}),
    ("completions", {"model": "m", "prompt": [TFN_TOKENS, TFN_TOKENS]}),
    ("embeddings", {"model": "m", "input": TFN_TOKENS}),
    ("embeddings", {"model": "m", "input": [TFN_TOKENS]}),
])
@pytest.mark.parametrize("mode", [redaction.REDACT, redaction.RESTORE])
def test_token_id_prompts_are_refused_when_redaction_is_on(endpoint, payload, mode):
    ctx = RequestContext(endpoint, "req-1")
    prepared = _prepared(endpoint, payload)
    with pytest.raises(GatewayError) as caught:
        redact.apply(ctx, prepared, mode=mode)
    assert caught.value.status == 400
    assert caught.value.code == "redaction_needs_text"
    assert not prepared.changed


@pytest.mark.parametrize(("endpoint", "field", "payload"), [
    ("completions", "prompt", {"model": "m", "prompt": ["TFN 123 456 782", "no number"]}),
    ("embeddings", "input", {"model": "m", "input": "TFN 123 456 782"}),
])
def test_text_prompts_are_still_redacted(endpoint, field, payload):
    ctx = RequestContext(endpoint, "req-1")
    prepared = _prepared(endpoint, payload)
    redact.apply(ctx, prepared, mode=redaction.REDACT)
    value = prepared.payload[field]
    assert "123 456 782" not in str(value) and "[AU_TFN_1]" in str(value)


def test_a_completion_suffix_is_redacted_like_its_prompt():
    # The text after the insertion point is as much the customer's words as the prompt before it.
    ctx = RequestContext("completions", "req-1")
    prepared = _prepared("completions", {"model": "m", "prompt": "Dear customer,", "suffix": "TFN 123 456 782."})
    redact.apply(ctx, prepared, mode=redaction.REDACT)
    assert prepared.payload["suffix"] == "TFN [AU_TFN_1]." and prepared.changed
