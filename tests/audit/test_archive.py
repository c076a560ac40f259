"""R-AUD-3: sealed segments of the chain ship to S3 (SSE-KMS, Object Lock COMPLIANCE, ap-southeast-2) or, with
no bucket, to a local folder; the segment's digest and key are recorded back into the chain."""

from __future__ import annotations

import hashlib
import json
from datetime import timedelta

import boto3
import pytest
from django.core.management import call_command
from django.utils import timezone
from moto import mock_aws

from audit import chain
from audit.archive import REGION, SEGMENT_ACTION, segment_seal
from audit.models import AuditEntry
from audit.services import audit_jobs, audit_seal, record


def _sealed(n: int) -> None:
    for i in range(n):
        record(action="test.archived", data={"i": i})
    audit_seal()


@pytest.fixture
def aws(monkeypatch, settings):
    for name, value in {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing",
                        "AWS_SESSION_TOKEN": "testing", "AWS_DEFAULT_REGION": REGION}.items():
        monkeypatch.setenv(name, value)
    settings.AWS_ENDPOINT_URL = None
    with mock_aws():
        s3 = boto3.client("s3", region_name=REGION)
        s3.create_bucket(Bucket="wattle-audit", ObjectLockEnabledForBucket=True,
                         CreateBucketConfiguration={"LocationConstraint": REGION})
        key_id = boto3.client("kms", region_name=REGION).create_key()["KeyMetadata"]["KeyId"]
        settings.AUDIT_ARCHIVE_BUCKET = "wattle-audit"
        settings.AUDIT_ARCHIVE_KMS_KEY_ID = key_id
        settings.AUDIT_ARCHIVE_RETENTION_DAYS = 30
        yield s3, key_id


def test_segment_ships_to_s3_with_kms_and_compliance_lock(db, aws):
    s3, key_id = aws
    _sealed(4)
    before = timezone.now()
    segment = segment_seal()
    assert (segment.first_seq, segment.last_seq, segment.count) == (1, 4, 4)
    head = s3.head_object(Bucket="wattle-audit", Key=segment.key)
    assert head["ServerSideEncryption"] == "aws:kms"
    assert key_id in head["SSEKMSKeyId"]
    assert head["ObjectLockMode"] == "COMPLIANCE"
    retain = head["ObjectLockRetainUntilDate"]
    assert before + timedelta(days=30) - timedelta(minutes=1) <= retain <= timezone.now() + timedelta(days=30)
    body = s3.get_object(Bucket="wattle-audit", Key=segment.key)["Body"].read()
    assert hashlib.sha256(body).hexdigest() == segment.sha256
    lines = [json.loads(line) for line in body.splitlines()]
    assert [line["seq"] for line in lines] == [1, 2, 3, 4]
    # Each line carries its link: the file verifies on its own.
    prev = chain.GENESIS
    for line in lines:
        assert line["prev_hash"] == prev
        prev = chain.link(prev, line)
        assert prev == line["hash"]


def test_segment_digest_and_key_are_recorded_into_the_chain(db, aws):
    _sealed(2)
    segment = segment_seal()
    audit_seal()
    entry = AuditEntry.objects.get(action=SEGMENT_ACTION)
    assert entry.data == {"first_seq": 1, "last_seq": 2, "count": 2, "sha256": segment.sha256,
                          "key": segment.key, "store": "s3://wattle-audit"}
    assert entry.seq == 3 and entry.hash
    call_command("verify_audit")


def test_a_segment_is_cut_only_when_due_and_only_for_new_entries(db, aws, settings):
    settings.AUDIT_ARCHIVE_SEGMENT_S = 300
    _sealed(2)
    assert segment_seal() is not None
    audit_seal()
    assert segment_seal() is None  # not due yet
    assert segment_seal(force=True) is None  # due, but only its own entry is new
    _sealed(1)
    again = segment_seal(force=True)
    assert (again.first_seq, again.last_seq) == (3, 4)


def test_without_a_bucket_segments_go_to_the_local_folder(db, settings, tmp_path):
    settings.AUDIT_ARCHIVE_BUCKET = ""
    settings.AUDIT_ARCHIVE_DIR = tmp_path
    _sealed(3)
    audit_jobs()  # what the beat and the embedded loop run: seal, then archive
    entry = AuditEntry.objects.get(action=SEGMENT_ACTION)
    path = tmp_path / entry.data["key"]
    assert hashlib.sha256(path.read_bytes()).hexdigest() == entry.data["sha256"]
    assert entry.data["store"] == "file" and not path.stat().st_mode & 0o222


def test_embedded_loop_seals_and_archives_without_a_beat(db, settings, tmp_path, monkeypatch):
    import threading

    import django.db

    # The loop drops stale connections between rounds; here that would be the test's own transaction.
    monkeypatch.setattr(django.db, "close_old_connections", lambda: None)

    from portal.lifespan import audit_jobs_loop

    settings.AUDIT_ARCHIVE_BUCKET = ""
    settings.AUDIT_ARCHIVE_DIR = tmp_path
    record(action="test.embedded")
    stop = threading.Event()
    stop.set()  # one round, then return
    audit_jobs_loop(stop=stop, interval=0)
    assert AuditEntry.objects.get(action="test.embedded").seq == 1
    assert AuditEntry.objects.filter(action=SEGMENT_ACTION).exists()
