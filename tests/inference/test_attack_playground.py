"""The playground's socket under attack: oversized frames count against the connection's allowance (a flood of
them is closed like any other), and the tenant's redaction applies to what agents type (the replica sees
placeholders; restore mode gives the agent its originals back)."""

from __future__ import annotations

import orjson
import pytest

from tenants.services import tenant_redaction_set
from tests.inference import test_playground as pg
from tests.inference.test_playground import chat, next_frame, ready, reply

# The playground tests' fixtures, used here under their own names.
gateway, agent, agent_cookie = pg.gateway, pg.agent, pg.agent_cookie

pytestmark = pytest.mark.django_db(transaction=True)


async def test_a_flood_of_oversized_frames_is_refused_by_the_allowance_and_closed(
        acme, agent_cookie, gateway, settings):
    settings.INFERENCE_PLAYGROUND_RATE = 0.01  # so the bucket does not refill during the test
    settings.INFERENCE_PLAYGROUND_BURST = 3
    comm = await ready(acme.slug, agent_cookie)
    big = orjson.dumps(chat(text="x" * settings.INFERENCE_PLAYGROUND_MAX_MESSAGE_BYTES)).decode()
    for _ in range(3):
        await comm.send_to(text_data=big)
        assert (await next_frame(comm))["code"] == "message_too_large"
    codes = []
    for _ in range(30):
        await comm.send_to(text_data=big)
        frame = await next_frame(comm)
        codes.append(frame.get("code"))
        if frame["type"] == "close":
            break
    assert codes[0] == "rate_limit_exceeded"
    assert codes[-1] == 4429 and len(codes) == 20  # closed at the twentieth refusal in a row


def _set_mode(tenant, mode: str, capture) -> None:
    with capture(execute=True):  # the tenant record is published on commit
        tenant_redaction_set(tenant=tenant, mode=mode)


@pytest.mark.parametrize(("mode", "shown"), [("redact", "[AU_TFN_1] and [AU_PHONE_1]"),
                                             ("restore", "123 456 782 and 0412 345 678")])
async def test_the_tenants_redaction_applies_to_what_agents_type(
        acme, agent_cookie, gateway, mode, shown, django_capture_on_commit_callbacks):
    from asgiref.sync import sync_to_async

    await sync_to_async(_set_mode)(acme, mode, django_capture_on_commit_callbacks)
    comm = await ready(acme.slug, agent_cookie)
    await comm.send_to(text_data=orjson.dumps(
        chat(text="/echo my TFN is 123 456 782 and 0412 345 678", max_tokens=200)).decode())
    frames, done = await reply(comm)
    text = "".join(f["content"] for f in frames if f["type"] == "delta")
    assert done["type"] == "done", done
    assert text == f"my TFN is {shown}" or text.endswith(shown), text
