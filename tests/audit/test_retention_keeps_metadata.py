"""R-RET-1, R-RET-2: destroying content (the daily expiry job, and off-boarding) leaves the metadata: the access
records of the same requests and the audit trail, whose chain still verifies."""

from __future__ import annotations

import base64
import os
import time
from datetime import timedelta

import pytest
from django.core.management import call_command
from django.utils import timezone

from audit.models import AuditEntry, Transcript
from audit.services import audit_seal
from audit.transcripts import retention_destroy, transcripts_ingest
from billing.models import UsageEvent
from tenants.services import tenant_set_status
from tests.audit.test_retention import _emit, _keep

pytestmark = pytest.mark.django_db


@pytest.fixture(autouse=True)
def _local_kek(settings):
    settings.AUDIT_TRANSCRIPT_KMS_KEY_ID = ""
    settings.AUDIT_TRANSCRIPT_LOCAL_KEK = base64.b64encode(os.urandom(32)).decode()


def _access_record(tenant, request_id: str, *, age: timedelta) -> UsageEvent:
    return UsageEvent.objects.create(request_id=request_id, tenant=tenant, key_id="k1", endpoint="chat.completions",
                                     model="m", backend="vllm-a", status=200, customer_id="cust-1",
                                     prompt_sha256="a" * 64, reply_sha256="b" * 64,
                                     created_at=timezone.now() - age)


def test_the_expiry_job_destroys_content_and_keeps_the_access_record_and_the_trail(
        acme, django_capture_on_commit_callbacks):
    _keep(acme, 1, django_capture_on_commit_callbacks)
    _access_record(acme, "r-old", age=timedelta(days=2))
    _emit(acme, "r-old", days=1, created=time.time() - 2 * 86400)
    transcripts_ingest()
    audit_seal()
    entries = AuditEntry.objects.count()
    assert retention_destroy() == {str(acme.pk): 1}
    audit_seal()
    assert not Transcript.objects.exists()
    kept = UsageEvent.objects.get(request_id="r-old")
    assert (kept.customer_id, kept.prompt_sha256, kept.reply_sha256) == ("cust-1", "a" * 64, "b" * 64)
    assert AuditEntry.objects.count() == entries + 1  # the destruction's own entry, nothing removed
    call_command("verify_audit")


def test_off_boarding_destroys_content_and_keeps_the_access_records_and_the_trail(
        acme, django_capture_on_commit_callbacks):
    _keep(acme, 30, django_capture_on_commit_callbacks)
    _access_record(acme, "r-1", age=timedelta(minutes=5))
    _emit(acme, "r-1")
    transcripts_ingest()
    audit_seal()
    entries = AuditEntry.objects.filter(tenant=acme).count()
    with django_capture_on_commit_callbacks(execute=True):
        tenant_set_status(tenant=acme, status="closed", reason="contract ended")
    audit_seal()
    assert not Transcript.objects.exists()
    assert UsageEvent.objects.filter(tenant=acme, request_id="r-1").exists()
    assert AuditEntry.objects.filter(tenant=acme).count() > entries
    call_command("verify_audit")
