"""Start-up checks (APP 8, R-REG-1): every S3 bucket and KMS key the product is configured with is in an allowed
Australian region — proved by asking AWS, not by trusting a label.

- A bucket's region is what ``GetBucketLocation`` answers (a bucket named "…-sydney" can live in us-east-1, and a
  client built for Sydney still reaches it: moto and S3 itself redirect rather than refuse).
- A KMS key's region is its ARN's; a key given as an id or alias is resolved with ``DescribeKey`` first, since
  which region it is in depends on where it is looked up.

Which settings are checked follows from their names: every setting ending in ``_BUCKET`` names a bucket, every
one ending in ``_KMS_KEY_ID`` a key (``AUDIT_ARCHIVE_BUCKET``, ``AUDIT_ARCHIVE_KMS_KEY_ID``, and any added
later), so a new one cannot be forgotten here. An empty one is not in use and is skipped.

Deployment checks (``manage.py check --deploy``, run before every production start). With DEBUG on (the embedded
default) they ask nothing of AWS. Production that cannot reach AWS cannot prove residency, which is an error,
unless ``AUDIT_RESIDENCY_OFFLINE_OK`` says the build has no route to AWS on purpose (then a warning).
"""

from __future__ import annotations

import re
from collections.abc import Iterable

from django.conf import settings
from django.core.checks import CheckMessage, Error, Tags, Warning, register

BUCKET_SUFFIX = "_BUCKET"
KMS_KEY_SUFFIX = "_KMS_KEY_ID"

_KMS_ARN = re.compile(r"^arn:aws[\w-]*:kms:(?P<region>[a-z0-9-]+):\d{12}:(?:key|alias)/.+$")


def configured(suffix: str) -> list[tuple[str, str]]:
    """(setting name, value) for every non-empty string setting whose name ends with ``suffix``."""
    found = []
    # A set: under override_settings, dir() lists an overridden name once per layer.
    for name in set(dir(settings)):
        if name.isupper() and name.endswith(suffix):
            value = getattr(settings, name)
            if isinstance(value, str) and value.strip():
                found.append((name, value.strip()))
    return sorted(found)


def aws_client(service: str):
    """A boto3 client in ``AWS_REGION`` (R-REG-1), failing fast: a start-up check must not hang on a network."""
    import boto3
    from botocore.config import Config

    config = Config(connect_timeout=3, read_timeout=5, retries={"max_attempts": 2, "mode": "standard"})
    return boto3.client(service, region_name=settings.AWS_REGION, endpoint_url=settings.AWS_ENDPOINT_URL,
                        config=config)


def bucket_region(client, bucket: str) -> str:
    """The region S3 says ``bucket`` is in. GetBucketLocation answers no constraint for us-east-1, and "EU" for
    buckets made in eu-west-1 before regions had names."""
    location = client.get_bucket_location(Bucket=bucket).get("LocationConstraint")
    return {None: "us-east-1", "": "us-east-1", "EU": "eu-west-1"}.get(location, location)


def kms_key_region(key: str, client_factory=aws_client) -> str:
    """The region of a KMS key given as a key or alias ARN (read from it), or as an id or ``alias/…`` name
    (resolved by DescribeKey in AWS_REGION, then read from the ARN it returns)."""
    match = _KMS_ARN.match(key)
    if match is None:
        arn = client_factory("kms").describe_key(KeyId=key)["KeyMetadata"]["Arn"]
        match = _KMS_ARN.match(arn)
        if match is None:
            raise ValueError(f"DescribeKey returned an ARN that names no region: {arn!r}")
    return match["region"]


def _unproven(setting: str, what: str, exc: Exception) -> CheckMessage:
    text = f"{setting}: cannot confirm the region of {what}: {type(exc).__name__}: {exc}"
    if settings.AUDIT_RESIDENCY_OFFLINE_OK:
        return Warning(text, hint="AUDIT_RESIDENCY_OFFLINE_OK is set: residency is not proved at start-up.",
                       id="audit.W103")
    return Error(text, hint="Residency cannot be proved without AWS. Check credentials and network, or set "
                            "AUDIT_RESIDENCY_OFFLINE_OK for a build with no route to AWS.", id="audit.E103")


def check_buckets(buckets: Iterable[tuple[str, str]]) -> list[CheckMessage]:
    allowed = list(settings.ALLOWED_DATA_REGIONS)
    problems: list[CheckMessage] = []
    client = None
    for setting, bucket in buckets:
        try:
            client = client or aws_client("s3")
            region = bucket_region(client, bucket)
        except Exception as exc:  # any failure to ask is the same finding: not proved
            problems.append(_unproven(setting, f"bucket {bucket!r}", exc))
            continue
        if region not in allowed:
            problems.append(Error(
                f"{setting}: bucket {bucket!r} is in {region}, outside the allowed regions {allowed}.",
                hint="Data must stay in Australia: use a bucket created in an allowed region.", id="audit.E101",
            ))
    return problems


def check_kms_keys(keys: Iterable[tuple[str, str]], client_factory=aws_client) -> list[CheckMessage]:
    allowed = list(settings.ALLOWED_DATA_REGIONS)
    problems: list[CheckMessage] = []
    for setting, key in keys:
        try:
            region = kms_key_region(key, client_factory)
        except Exception as exc:  # any failure to ask is the same finding: not proved
            problems.append(_unproven(setting, f"KMS key {key!r}", exc))
            continue
        if region not in allowed:
            problems.append(Error(
                f"{setting}: KMS key {key!r} is in {region}, outside the allowed regions {allowed}.",
                hint="Keys that protect Australian data must be created in an allowed region.", id="audit.E102",
            ))
    return problems


@register(Tags.security, deploy=True)
def storage_in_allowed_regions(app_configs, **kwargs) -> list[CheckMessage]:
    if settings.DEBUG:
        return []
    return check_buckets(configured(BUCKET_SUFFIX)) + check_kms_keys(configured(KMS_KEY_SUFFIX))
