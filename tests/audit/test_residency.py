"""Residency (R-REG-1, R-REG-2): production start-up checks prove that buckets, KMS keys and inference backends are
in the allowed Australian regions, asking AWS (moto here) for a bucket's real location and reading a key's ARN."""

from __future__ import annotations

import boto3
import pytest
from django.core import checks
from moto import mock_aws

from audit import residency
from inference import checks as inference_checks

SYDNEY, VIRGINIA = "ap-southeast-2", "us-east-1"


@pytest.fixture
def aws(monkeypatch, settings):
    """moto in place of AWS, with credentials that can reach nothing real; production (DEBUG off)."""
    for name, value in {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing",
                        "AWS_SESSION_TOKEN": "testing", "AWS_DEFAULT_REGION": SYDNEY}.items():
        monkeypatch.setenv(name, value)
    settings.DEBUG = False
    settings.AWS_REGION = SYDNEY
    settings.AWS_ENDPOINT_URL = None
    settings.AUDIT_ARCHIVE_BUCKET = ""
    settings.AUDIT_ARCHIVE_KMS_KEY_ID = ""
    settings.AUDIT_RESIDENCY_OFFLINE_OK = False
    with mock_aws():
        yield


def _bucket(name: str, region: str) -> str:
    s3 = boto3.client("s3", region_name=region)
    if region == VIRGINIA:
        s3.create_bucket(Bucket=name)  # us-east-1 takes no location constraint
    else:
        s3.create_bucket(Bucket=name, CreateBucketConfiguration={"LocationConstraint": region})
    return name


def _key(region: str, alias: str | None = None) -> str:
    kms = boto3.client("kms", region_name=region)
    arn = kms.create_key()["KeyMetadata"]["Arn"]
    if alias:
        kms.create_alias(AliasName=alias, TargetKeyId=arn)
    return arn


def _ids(messages) -> list[str]:
    return [m.id for m in messages]


def test_a_sydney_bucket_and_key_pass(aws, settings):
    settings.AUDIT_ARCHIVE_BUCKET = _bucket("wattle-audit", SYDNEY)
    settings.AUDIT_ARCHIVE_KMS_KEY_ID = _key(SYDNEY)
    assert residency.storage_in_allowed_regions(None) == []


def test_a_bucket_in_us_east_1_fails_naming_the_setting_and_region(aws, settings):
    # The name says Sydney; the bucket is in Virginia. The check believes S3, not the label.
    settings.AUDIT_ARCHIVE_BUCKET = _bucket("wattle-audit-sydney", VIRGINIA)
    [problem] = residency.storage_in_allowed_regions(None)
    assert problem.id == "audit.E101" and problem.level == checks.ERROR
    assert "AUDIT_ARCHIVE_BUCKET" in problem.msg and "us-east-1" in problem.msg


def test_a_kms_key_arn_outside_australia_fails(aws, settings):
    settings.AUDIT_ARCHIVE_KMS_KEY_ID = _key(VIRGINIA)
    [problem] = residency.storage_in_allowed_regions(None)
    assert problem.id == "audit.E102"
    assert "AUDIT_ARCHIVE_KMS_KEY_ID" in problem.msg and "us-east-1" in problem.msg


def test_a_key_arn_is_read_without_asking_aws():
    arn = "arn:aws:kms:eu-west-2:111122223333:key/1234abcd-12ab-34cd-56ef-1234567890ab"

    def no_client(service):
        raise AssertionError("an ARN names its region: no call is needed")

    assert residency.kms_key_region(arn, client_factory=no_client) == "eu-west-2"
    assert residency.kms_key_region("arn:aws:kms:ap-southeast-4:111122223333:alias/audit",
                                    client_factory=no_client) == "ap-southeast-4"


def test_an_alias_or_key_id_is_resolved_through_describe_key(aws, settings):
    sydney_arn = _key(SYDNEY, alias="alias/wattle-audit")
    settings.AUDIT_ARCHIVE_KMS_KEY_ID = "alias/wattle-audit"
    assert residency.storage_in_allowed_regions(None) == []
    settings.AUDIT_ARCHIVE_KMS_KEY_ID = sydney_arn.rsplit("/", 1)[1]  # a bare key id
    assert residency.storage_in_allowed_regions(None) == []


def test_any_setting_named_like_a_bucket_or_key_is_checked(aws, settings):
    settings.TRANSCRIPTS_BUCKET = _bucket("wattle-transcripts", VIRGINIA)
    settings.TRANSCRIPTS_KMS_KEY_ID = _key(VIRGINIA)
    problems = residency.storage_in_allowed_regions(None)
    assert sorted(_ids(problems)) == ["audit.E101", "audit.E102"]
    assert all("TRANSCRIPTS_" in p.msg for p in problems)


def test_a_bucket_that_cannot_be_reached_is_an_error_unless_offline_is_allowed(aws, settings):
    settings.AUDIT_ARCHIVE_BUCKET = "no-such-bucket-anywhere"
    [problem] = residency.storage_in_allowed_regions(None)
    assert problem.id == "audit.E103" and "cannot confirm" in problem.msg
    settings.AUDIT_RESIDENCY_OFFLINE_OK = True
    [problem] = residency.storage_in_allowed_regions(None)
    assert problem.id == "audit.W103" and problem.level == checks.WARNING


def test_in_debug_nothing_is_required_and_aws_is_not_asked(settings, monkeypatch):
    settings.DEBUG = True
    settings.AUDIT_ARCHIVE_BUCKET = "anything"
    settings.AUDIT_ARCHIVE_KMS_KEY_ID = "alias/anything"
    monkeypatch.setattr(residency, "aws_client", lambda service: pytest.fail("AWS asked in DEBUG"))
    assert residency.storage_in_allowed_regions(None) == []


def test_the_storage_check_runs_with_check_deploy():
    deploy_checks = checks.registry.registry.get_checks(include_deployment_checks=True)
    assert residency.storage_in_allowed_regions in deploy_checks
    assert residency.storage_in_allowed_regions not in checks.registry.registry.get_checks()


def test_backends_outside_australia_fail(settings):
    settings.INFERENCE_BACKENDS = [{"name": "syd", "url": "http://syd:8000", "region": SYDNEY},
                                   {"name": "us", "url": "http://us:8000", "region": VIRGINIA}]
    problems = inference_checks.backends_in_allowed_regions(None)
    assert _ids(problems) == ["wattle.E001"] and "'us'" in problems[0].msg and VIRGINIA in problems[0].msg


@pytest.mark.django_db
def test_backends_in_the_database_outside_australia_fail(settings):
    from inference.models import Backend

    Backend.objects.create(name="syd", base_url="http://syd:8000", region=SYDNEY)
    # Written around backend_save (which refuses it), as a row restored from elsewhere could be.
    Backend.objects.create(name="oregon", base_url="http://or:8000", region="us-west-2")
    assert inference_checks.stored_backends_in_allowed_regions(None) == []  # no database asked for
    [problem] = inference_checks.stored_backends_in_allowed_regions(None, databases=["default"])
    assert problem.id == "wattle.E001" and "oregon" in problem.msg and "us-west-2" in problem.msg
