"""R-RET-1 and R-RET-2: transcripts are stored only for a tenant that keeps them, sealed under its data key
(KMS with the encryption context {"tenant": id}, or the local key-wrapping key), expire after its period and are
destroyed (counted, audited) by the daily job; off-boarding destroys content at once and schedules the key for
shredding."""

from __future__ import annotations

import base64
import os
import stat
import time
from datetime import timedelta

import boto3
import pytest
from django.core.exceptions import ValidationError
from django.db import connection
from django.utils import timezone
from moto import mock_aws

from audit import envelope
from audit.models import AuditEntry, TenantDataKey, Transcript
from audit.transcripts import data_keys_shred, retention_destroy, transcripts_ingest
from core import contract
from core.redis import get_redis
from tenants.services import tenant_retention_set, tenant_set_status

REGION = "ap-southeast-2"
SECRET = "the customer's card ends 4242 and lives at 12 Wattle St"


@pytest.fixture(autouse=True)
def _fresh_key_cache():
    envelope.forget()
    yield
    envelope.forget()


@pytest.fixture
def local_kek(settings):
    settings.AUDIT_TRANSCRIPT_KMS_KEY_ID = ""
    settings.AUDIT_TRANSCRIPT_LOCAL_KEK = base64.b64encode(os.urandom(32)).decode()


@pytest.fixture
def kms(monkeypatch, settings):
    for name, value in {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing",
                        "AWS_SESSION_TOKEN": "testing", "AWS_DEFAULT_REGION": REGION}.items():
        monkeypatch.setenv(name, value)
    settings.AWS_ENDPOINT_URL = None
    settings.AWS_REGION = REGION
    with mock_aws():
        client = boto3.client("kms", region_name=REGION)
        settings.AUDIT_TRANSCRIPT_KMS_KEY_ID = client.create_key()["KeyMetadata"]["Arn"]
        yield client


def _emit(tenant, request_id: str, *, days: int = 30, created: float | None = None, turn: int = 0,
          customer_id: str = "") -> None:
    item = contract.TranscriptRecord(
        tenant=str(tenant.pk), request_id=request_id, created=time.time() if created is None else created,
        retention_days=days, prompt=[{"role": "user", "content": SECRET}], reply=f"noted: {SECRET}", turn=turn,
        customer_id=customer_id, model="m", endpoint="chat.completions", key_id="k1")
    get_redis().xadd(contract.transcript_stream_key(), {"t": item.encode()})


def _keep(tenant, days: int, capture) -> None:
    with capture(execute=True):
        tenant_retention_set(tenant=tenant, days=days)


def _raw_sealed(row: Transcript) -> bytes:
    with connection.cursor() as cursor:
        cursor.execute(f"SELECT sealed FROM {Transcript._meta.db_table} WHERE id = %s",  # noqa: S608
                       [row.pk.hex if connection.vendor == "sqlite" else row.pk])
        return bytes(cursor.fetchone()[0])


def test_stored_content_is_sealed_and_decrypts_only_for_its_row(db, acme, local_kek,
                                                                django_capture_on_commit_callbacks):
    _keep(acme, 30, django_capture_on_commit_callbacks)
    _emit(acme, "req_1")
    assert transcripts_ingest() == 1
    row = Transcript.objects.get()
    assert row.tenant_id == acme.pk and row.request_id == "req_1" and row.customer_id == ""
    assert abs((row.expires_at - row.created_at) - timedelta(days=30)) < timedelta(seconds=1)
    raw = _raw_sealed(row)
    assert b"4242" not in raw and b"Wattle" not in raw  # no plaintext in the column
    key = envelope.plaintext_key(row.data_key)
    content = envelope.open_sealed(key, str(acme.pk), str(row.pk), row.sealed)
    assert content == {"prompt": [{"role": "user", "content": SECRET}], "reply": f"noted: {SECRET}"}
    # Associated data binds the content to its tenant and row: moved anywhere else, it doesn't decrypt.
    with pytest.raises(envelope.DecryptionError):
        envelope.open_sealed(key, "another-tenant", str(row.pk), row.sealed)
    with pytest.raises(envelope.DecryptionError):
        envelope.open_sealed(key, str(acme.pk), "another-row", row.sealed)
    # The wrapped key is the tenant's: unwrapping it under another tenant's context fails.
    data_key = TenantDataKey.objects.get(tenant=acme)
    with pytest.raises(envelope.DecryptionError):
        envelope.unwrap("another-tenant", data_key.provider, data_key.wrapped)


def test_ingest_is_idempotent_on_request_and_turn(db, acme, local_kek, django_capture_on_commit_callbacks):
    _keep(acme, 30, django_capture_on_commit_callbacks)
    _emit(acme, "req_1")
    _emit(acme, "req_1")  # the same record twice (a replay)
    _emit(acme, "req_1", turn=1)  # another turn of the same request
    transcripts_ingest()
    assert sorted(Transcript.objects.values_list("turn", flat=True)) == [0, 1]
    assert get_redis().xlen(contract.transcript_stream_key()) == 0  # acknowledged and deleted after the commit


def test_records_of_an_unknown_tenant_or_malformed_are_dropped_and_acknowledged(db, acme, local_kek):
    item = contract.TranscriptRecord(tenant="00000000-0000-0000-0000-000000000000", request_id="req_x",
                                     created=time.time(), retention_days=5, prompt="p", reply="r")
    get_redis().xadd(contract.transcript_stream_key(), {"t": item.encode()})
    get_redis().xadd(contract.transcript_stream_key(), {"t": b'{"v": 1, "tenant": 3}'})  # malformed
    not_an_id = contract.TranscriptRecord(tenant="not-a-uuid", request_id="req_y", created=time.time(),
                                          retention_days=5, prompt="p", reply="r")
    get_redis().xadd(contract.transcript_stream_key(), {"t": not_an_id.encode()})
    transcripts_ingest()
    assert not Transcript.objects.exists() and not TenantDataKey.objects.exists()
    assert get_redis().xlen(contract.transcript_stream_key()) == 0


def test_kms_data_key_uses_the_tenant_encryption_context(db, acme, bluegum, kms, django_capture_on_commit_callbacks):
    _keep(acme, 30, django_capture_on_commit_callbacks)
    data_key = TenantDataKey.objects.get(tenant=acme)
    assert data_key.provider == "kms" and data_key.wrapping_key.startswith("arn:aws:kms:ap-southeast-2:")
    # KMS itself refuses the wrapped key under another context (and with none).
    with pytest.raises(Exception, match="InvalidCiphertext"):
        kms.decrypt(CiphertextBlob=bytes(data_key.wrapped), EncryptionContext={"tenant": str(bluegum.pk)})
    with pytest.raises(envelope.DecryptionError):
        envelope.unwrap(str(bluegum.pk), "kms", data_key.wrapped, data_key.wrapping_key)
    plain = kms.decrypt(CiphertextBlob=bytes(data_key.wrapped), EncryptionContext={"tenant": str(acme.pk)})
    _emit(acme, "req_1")
    transcripts_ingest()
    row = Transcript.objects.get()
    envelope.forget()  # read back through KMS, not the cache
    assert envelope.plaintext_key(row.data_key) == plain["Plaintext"]
    assert envelope.open_sealed(plain["Plaintext"], str(acme.pk), str(row.pk), row.sealed)["reply"].startswith("noted")


def test_local_key_wrapping_key_file_is_created_private(db, settings, tmp_path):
    settings.AUDIT_TRANSCRIPT_KMS_KEY_ID = ""
    settings.AUDIT_TRANSCRIPT_LOCAL_KEK = ""
    settings.AUDIT_TRANSCRIPT_LOCAL_KEK_FILE = tmp_path / "kek" / "transcript-kek.key"
    plain, wrapped, provider, ref = envelope.generate("t-1")
    path = settings.AUDIT_TRANSCRIPT_LOCAL_KEK_FILE
    assert stat.S_IMODE(path.stat().st_mode) == 0o600 and len(path.read_bytes()) == 32
    assert provider == "local" and ref.startswith("local:") and plain not in wrapped
    assert envelope.unwrap("t-1", provider, wrapped) == plain
    assert path.read_bytes() != settings.SECRET_KEY.encode()[:32]


def test_expiry_job_destroys_and_audits_counts_per_tenant(db, acme, bluegum, local_kek,
                                                          django_capture_on_commit_callbacks):
    _keep(acme, 1, django_capture_on_commit_callbacks)
    _keep(bluegum, 30, django_capture_on_commit_callbacks)
    old = time.time() - 2 * 86400
    _emit(acme, "a-old-1", days=1, created=old)
    _emit(acme, "a-old-2", days=1, created=old)
    _emit(acme, "a-new", days=1)
    _emit(bluegum, "b-old", days=30, created=old)
    transcripts_ingest()
    counts = retention_destroy()
    assert counts == {str(acme.pk): 2}
    assert set(Transcript.objects.values_list("request_id", flat=True)) == {"a-new", "b-old"}
    entry = AuditEntry.objects.get(action="retention.destroyed")
    assert entry.tenant_id == acme.pk and entry.data["count"] == 2
    assert retention_destroy() == {}  # nothing more, nothing audited
    assert AuditEntry.objects.filter(action="retention.destroyed").count() == 1


def test_shortening_retention_brings_kept_content_forward(db, acme, local_kek, django_capture_on_commit_callbacks):
    _keep(acme, 30, django_capture_on_commit_callbacks)
    _emit(acme, "r1", days=30, created=time.time() - 10 * 86400)
    transcripts_ingest()
    _keep(acme, 7, django_capture_on_commit_callbacks)
    assert retention_destroy() == {str(acme.pk): 1}


def test_retention_setting_is_validated_audited_and_published(db, acme, local_kek,
                                                              django_capture_on_commit_callbacks):
    with pytest.raises(ValidationError):
        tenant_retention_set(tenant=acme, days=2558)
    with pytest.raises(ValidationError):
        tenant_retention_set(tenant=acme, days=-1)
    _keep(acme, 90, django_capture_on_commit_callbacks)
    entry = AuditEntry.objects.get(action="tenant.retention.update")
    assert entry.data["from"] == 0 and entry.data["to"] == 90
    published = contract.TenantRecord.decode(get_redis().get(contract.tenant_record_key(str(acme.pk))))
    assert published.retention_days == 90
    assert TenantDataKey.objects.filter(tenant=acme).count() == 1
    _keep(acme, 0, django_capture_on_commit_callbacks)  # off: capture stops; the key stays for what is kept
    published = contract.TenantRecord.decode(get_redis().get(contract.tenant_record_key(str(acme.pk))))
    assert published.retention_days == 0


def test_offboarding_destroys_content_and_schedules_the_key(db, acme, bluegum, local_kek, settings,
                                                            django_capture_on_commit_callbacks):
    _keep(acme, 30, django_capture_on_commit_callbacks)
    _keep(bluegum, 30, django_capture_on_commit_callbacks)
    _emit(acme, "a1")
    _emit(acme, "a2")
    _emit(bluegum, "b1")
    transcripts_ingest()
    with django_capture_on_commit_callbacks(execute=True):
        tenant_set_status(tenant=acme, status="closed", reason="contract ended")
    assert list(Transcript.objects.values_list("request_id", flat=True)) == ["b1"]
    key = TenantDataKey.objects.get(tenant=acme)
    expected = timezone.now() + timedelta(days=settings.AUDIT_TRANSCRIPT_SHRED_DAYS)
    assert abs(key.destroy_after - expected) < timedelta(minutes=1)
    entry = AuditEntry.objects.get(action="retention.offboarded")
    assert entry.tenant_id == acme.pk and entry.data["destroyed"] == 2 and entry.data["keys_scheduled"] == 1
    # Late records for the closed tenant are not stored (its key is being shredded, none is made).
    _emit(acme, "a3")
    transcripts_ingest()
    assert not Transcript.objects.filter(tenant=acme).exists()
    # Not yet due: the key stays; once due, it is shredded and audited.
    assert data_keys_shred() == 0
    assert data_keys_shred(now=key.destroy_after + timedelta(seconds=1)) == 1
    assert not TenantDataKey.objects.filter(tenant=acme).exists()
    assert TenantDataKey.objects.filter(tenant=bluegum).exists()
    assert AuditEntry.objects.get(action="retention.key_shredded").data["data_key"] == str(key.pk)


def test_the_transcript_kms_key_is_held_to_the_allowed_regions(settings):
    """R-REG: the residency check covers the key that wraps transcript data keys (by its setting's suffix)."""
    from audit.residency import KMS_KEY_SUFFIX, check_kms_keys, configured

    settings.AUDIT_TRANSCRIPT_KMS_KEY_ID = "arn:aws:kms:us-east-1:123456789012:key/1234abcd-12ab-34cd-56ef-1234567890ab"
    problems = check_kms_keys([item for item in configured(KMS_KEY_SUFFIX) if item[0] == "AUDIT_TRANSCRIPT_KMS_KEY_ID"])
    assert [p.id for p in problems] == ["audit.E102"] and "AUDIT_TRANSCRIPT_KMS_KEY_ID" in problems[0].msg


def test_retention_is_not_turned_on_when_kms_cannot_make_the_key(db, acme, kms, settings):
    missing = "00000000-0000-0000-0000-0000000000ff"  # no such key: KMS refuses, as it would when unreachable
    settings.AUDIT_TRANSCRIPT_KMS_KEY_ID = f"arn:aws:kms:ap-southeast-2:123456789012:key/{missing}"
    with pytest.raises(ValidationError, match="encryption key service"):
        tenant_retention_set(tenant=acme, days=30)
    acme.refresh_from_db()
    assert acme.retention_days == 0 and not TenantDataKey.objects.exists()
    assert not AuditEntry.objects.filter(action="tenant.retention.update").exists()


def test_jobs_run_in_the_embedded_loop_and_on_celery_beat(db, acme, local_kek, settings, monkeypatch,
                                                          django_capture_on_commit_callbacks):
    import threading

    import django.db

    from audit import tasks
    from audit import transcripts as retention
    from portal.lifespan import audit_jobs_loop

    monkeypatch.setattr(django.db, "close_old_connections", lambda: None)
    beat = {entry["task"] for entry in settings.CELERY_BEAT_SCHEDULE.values()}
    assert {"audit.tasks.transcripts_ingest", "audit.tasks.retention_jobs"} <= beat
    assert tasks.transcripts_ingest.name == "audit.tasks.transcripts_ingest"
    _keep(acme, 1, django_capture_on_commit_callbacks)
    _emit(acme, "fresh", days=1)
    _emit(acme, "stale", days=1, created=time.time() - 3 * 86400)
    monkeypatch.setattr(retention, "_last_daily", None)  # this process hasn't run the daily job yet
    stop = threading.Event()
    stop.set()  # one round, then return
    audit_jobs_loop(stop=stop, interval=0)
    # Stored, then the stale one destroyed by the daily job in the same round.
    assert list(Transcript.objects.values_list("request_id", flat=True)) == ["fresh"]
    assert AuditEntry.objects.get(action="retention.destroyed").data["count"] == 1
    # The daily job doesn't run again within the day.
    assert retention.retention_jobs_due() is None


def test_an_individuals_copy_includes_their_transcripts_and_erasure_deletes_them(db, acme, local_kek,
                                                                                 django_capture_on_commit_callbacks):
    from audit.privacy_requests import privacy_request_erase, privacy_request_export, privacy_request_open

    _keep(acme, 30, django_capture_on_commit_callbacks)
    _emit(acme, "c1", customer_id="cust-9")
    _emit(acme, "c2", customer_id="cust-9")
    _emit(acme, "other", customer_id="cust-10")
    transcripts_ingest()
    Transcript.objects.filter(request_id="c2").update(sealed=b"\0" * 40)  # one altered: listed, not blocking
    access = privacy_request_open(tenant=acme, customer_id="cust-9", kind="access", channel="console")
    document = privacy_request_export(privacy_request=access)
    kept = {item["request_id"]: item for item in document["holdings"]["transcripts"]}
    assert set(kept) == {"c1", "c2"}
    assert kept["c1"]["prompt"] == [{"role": "user", "content": SECRET}] and kept["c2"]["unreadable"] is True
    erase = privacy_request_open(tenant=acme, customer_id="cust-9", kind="erase", channel="console")
    privacy_request_erase(privacy_request=erase)
    assert list(Transcript.objects.values_list("request_id", flat=True)) == ["other"]


def test_a_data_key_the_wrapping_key_no_longer_opens_is_replaced_not_a_poison_batch(
        db, acme, local_kek, settings, django_capture_on_commit_callbacks):
    _keep(acme, 30, django_capture_on_commit_callbacks)
    old = TenantDataKey.objects.get()
    settings.AUDIT_TRANSCRIPT_LOCAL_KEK = base64.b64encode(os.urandom(32)).decode()  # the KEK was replaced
    envelope.forget()
    _emit(acme, "after")
    assert transcripts_ingest() == 1
    row = Transcript.objects.get()
    assert row.data_key_id != old.pk
    assert envelope.open_sealed(envelope.plaintext_key(row.data_key), str(acme.pk), str(row.pk), row.sealed)
