"""R-RET end to end: a /v1 chat request of a tenant that keeps transcripts is stored, sealed, by the ingest (the
raw column holds no plaintext; it decrypts to the prompt and the reply); a tenant that keeps none has nothing
stored, and the data plane emits nothing for it."""

from __future__ import annotations

import base64
import os

import httpx
import pytest
from django.db import connection

from audit import envelope
from audit.models import Transcript
from audit.transcripts import transcripts_ingest
from core import contract
from core.redis import get_redis
from tenants.services import tenant_retention_set
from tests.conftest import ingested, wait_for

MODEL = "mistralai/Mistral-7B-Instruct-v0.3"
PROMPT = "/echo Please update the delivery address to 12 Banksia Rd"

pytestmark = pytest.mark.django_db(transaction=True)


@pytest.fixture(autouse=True)
def _local_kek(settings):
    settings.AUDIT_TRANSCRIPT_KMS_KEY_ID = ""
    settings.AUDIT_TRANSCRIPT_LOCAL_KEK = base64.b64encode(os.urandom(32)).decode()
    envelope.forget()
    yield
    envelope.forget()


def _chat(server, key: str, *, stream: bool = False) -> httpx.Response:
    body = {"model": MODEL, "messages": [{"role": "user", "content": PROMPT}], "max_tokens": 100, "stream": stream}
    response = httpx.post(f"{server.base_url}/v1/chat/completions", headers={"Authorization": f"Bearer {key}"},
                          json=body, timeout=30)
    assert response.status_code == 200, response.text
    return response


def _stored(expected: int) -> list[Transcript]:
    def done():
        transcripts_ingest()
        return Transcript.objects.count() >= expected

    wait_for(done, timeout=10)
    return list(Transcript.objects.order_by("created_at"))


def test_a_chat_request_and_its_reply_are_stored_sealed(gateway_ready, acme, issue_key,
                                                        django_capture_on_commit_callbacks):
    with django_capture_on_commit_callbacks(execute=True):
        tenant_retention_set(tenant=acme, days=14)
    key = issue_key(acme)
    response = _chat(gateway_ready, key)
    _chat(gateway_ready, key, stream=True)
    rows = _stored(2)
    assert len(rows) == 2 and rows[0].request_id == response.headers["x-request-id"]
    with connection.cursor() as cursor:
        cursor.execute(f"SELECT sealed FROM {Transcript._meta.db_table}")  # noqa: S608
        raw = b"".join(bytes(row[0]) for row in cursor.fetchall())
    assert b"Banksia" not in raw and b"delivery" not in raw
    for row in rows:
        content = envelope.open_sealed(envelope.plaintext_key(row.data_key), str(acme.pk), str(row.pk), row.sealed)
        assert content["prompt"] == [{"role": "user", "content": PROMPT}]
        assert content["reply"] == PROMPT  # the simulator's /echo: the streamed one joined whole
        assert row.tenant_id == acme.pk and row.model == MODEL and row.kind == "request"


def test_nothing_is_emitted_or_stored_when_retention_is_off(gateway_ready, acme, issue_key):
    from inference.gateway.app import gateway

    written = gateway.transcripts.written
    key = issue_key(acme)
    _chat(gateway_ready, key)
    _chat(gateway_ready, key, stream=True)
    ingested(2)  # both requests settled (their usage events are stored): any transcript would be queued by now
    assert get_redis().xlen(contract.transcript_stream_key()) == 0
    assert gateway.transcripts.written == written and gateway.transcripts.pending == 0
    transcripts_ingest()
    assert not Transcript.objects.exists()
