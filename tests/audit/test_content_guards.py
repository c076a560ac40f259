"""Guards on where data may go, that fail when a new code path breaks a promise of COMPLIANCE.md:

- R-REG-1: every AWS client the product builds names its region, taken from settings (the archive's, Sydney);
- R-AUD-3: segments ship at least every 5 minutes, however long the setting; only the audit archive writes to S3
  (the WORM bucket), so content never goes there;
- no tenant content is used for training or analytics: kept transcripts are decrypted only by the readers the
  privacy docs name (the console and staff break-glass reads through ``transcript_content``, and an individual's
  copy), each of them audited."""

from __future__ import annotations

import ast
import json
from datetime import timedelta
from pathlib import Path

import pytest
from django.utils import timezone

from audit import archive, envelope, residency
from audit.archive import SEGMENT_ACTION, segment_seal
from audit.models import AuditEntry
from audit.services import audit_seal, record
from inference import checks as inference_checks

ROOT = Path(__file__).resolve().parents[2]
PRODUCT = ("audit", "billing", "core", "inference", "portal", "tenants", "deploy")


def _product_files():
    for package in PRODUCT:
        for path in sorted((ROOT / package).rglob("*.py")):
            if "migrations" not in path.parts:
                yield path.relative_to(ROOT).as_posix(), ast.parse(path.read_text(), filename=str(path))


def _visit(node, path: str, name: str, found: list, function: str = "<module>") -> None:
    for child in ast.iter_child_nodes(node):
        inner = child.name if isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef)) else function
        if isinstance(child, ast.Call):
            func = child.func
            if (func.attr if isinstance(func, ast.Attribute) else getattr(func, "id", None)) == name:
                found.append((path, function, child))
        _visit(child, path, name, found, inner)


def _calls(name: str) -> list[tuple[str, str, ast.Call]]:
    """Every call of a function or method called ``name``: (file, enclosing function, call)."""
    found: list = []
    for path, tree in _product_files():
        _visit(tree, path, name, found)
    return found


# --- R-REG-1 -----------------------------------------------------------------------------------------------------
def test_every_boto3_client_in_the_product_names_its_region():
    built = [(path, call) for path, _, call in _calls("client") + _calls("resource")
             if isinstance(call.func, ast.Attribute) and getattr(call.func.value, "id", None) == "boto3"]
    assert {path for path, _ in built} >= {"audit/envelope.py", "audit/residency.py", "audit/archive.py"}
    unnamed = [f"{path}:{call.lineno}" for path, call in built
               if "region_name" not in {kw.arg for kw in call.keywords}]
    assert unnamed == []


def test_aws_clients_are_built_in_the_configured_region_and_the_archive_in_sydney(settings):
    settings.AWS_REGION = "ap-southeast-4"
    settings.AWS_ENDPOINT_URL = None
    assert envelope._kms().meta.region_name == "ap-southeast-4"
    assert residency.aws_client("s3").meta.region_name == "ap-southeast-4"
    assert archive._s3_client().meta.region_name == "ap-southeast-2"


def test_an_aws_region_outside_australia_fails_the_production_check(settings):
    settings.INFERENCE_BACKENDS = []
    settings.AWS_REGION = "us-west-2"
    assert [m.id for m in inference_checks.backends_in_allowed_regions(None)] == ["wattle.E002"]
    settings.AWS_REGION = "ap-southeast-4"
    assert inference_checks.backends_in_allowed_regions(None) == []


def test_the_allowed_regions_may_only_narrow_australia(settings):
    settings.INFERENCE_BACKENDS = []
    settings.AWS_REGION = "ap-southeast-2"
    settings.ALLOWED_DATA_REGIONS = ["ap-southeast-2", "us-east-1"]
    [problem] = inference_checks.backends_in_allowed_regions(None)
    assert problem.id == "wattle.E005" and "us-east-1" in problem.msg
    settings.ALLOWED_DATA_REGIONS = ["ap-southeast-2"]
    assert inference_checks.backends_in_allowed_regions(None) == []


# --- R-AUD-3 -----------------------------------------------------------------------------------------------------
def test_a_segment_interval_longer_than_five_minutes_is_held_to_five(db, settings, tmp_path, monkeypatch):
    settings.AUDIT_ARCHIVE_BUCKET = ""
    settings.AUDIT_ARCHIVE_DIR = tmp_path
    settings.AUDIT_ARCHIVE_SEGMENT_S = 3600
    record(action="test.archived")
    audit_seal()
    first = segment_seal()
    assert first is not None
    record(action="test.archived")
    audit_seal()
    shipped_at = AuditEntry.objects.filter(action=SEGMENT_ACTION).latest("id").created_at
    monkeypatch.setattr(timezone, "now", lambda: shipped_at + timedelta(seconds=archive.MAX_SEGMENT_S - 1))
    assert segment_seal() is None
    monkeypatch.setattr(timezone, "now", lambda: shipped_at + timedelta(seconds=archive.MAX_SEGMENT_S + 1))
    second = segment_seal()
    assert second is not None and second.first_seq == first.last_seq + 1


@pytest.mark.parametrize("method", ["put_object", "upload_file", "upload_fileobj", "copy_object",
                                    "create_multipart_upload"])
def test_only_the_audit_archive_writes_to_s3(method):
    writers = {(path, function) for path, function, _ in _calls(method)}
    assert writers <= {("audit/archive.py", "_ship")}


def test_an_archived_segment_holds_audit_entries_only(db, settings, tmp_path):
    settings.AUDIT_ARCHIVE_BUCKET = ""
    settings.AUDIT_ARCHIVE_DIR = tmp_path
    record(action="test.archived", data={"n": 1})
    audit_seal()
    segment = segment_seal()
    lines = [json.loads(line) for line in archive.segment_lines(segment.first_seq, segment.last_seq).splitlines()]
    hashes = dict(AuditEntry.objects.values_list("seq", "hash"))
    assert lines and [line["seq"] for line in lines] == list(range(segment.first_seq, segment.last_seq + 1))
    assert all(line["hash"] == hashes[line["seq"]] for line in lines)


# --- no training or analytics on kept content ---------------------------------------------------------------------
# Who may decrypt kept content. Each reads for the tenant (its people, or an individual's copy) and audits the
# read; adding a reader means adding it here, audited, and describing it in docs/privacy.md.
DECRYPTERS = {
    ("audit/transcripts.py", "transcript_content"),  # the transcripts pages and break-glass: one entry per read
    ("audit/transcripts.py", "_export"),  # an individual's copy (R-DSR-1), audited as privacy_request.exported
    ("inference/playground_history.py", "_open"),  # a member's own playground history, audited per listing
}
READERS = {
    ("tenants/views/transcripts.py", "_content"),  # owners and admins; staff under break-glass
    ("inference/playground_history.py", "conversation"),  # a member re-opening their own playground conversation
}


def test_kept_content_is_decrypted_only_by_the_named_readers():
    opened = {(path, function) for path, function, _ in _calls("open_sealed")}
    assert {("audit/transcripts.py", "transcript_content"), ("audit/transcripts.py", "_export")} <= opened
    assert opened <= DECRYPTERS, opened - DECRYPTERS
    readers = {(path, function) for path, function, _ in _calls("transcript_content")}
    assert ("tenants/views/transcripts.py", "_content") in readers
    assert readers <= READERS, readers - READERS
    # _export is the individual's copy, reached only through the holder registry of R-DSR-1.
    exporters = [(path, function) for path, function, call in _calls("Holder") for kw in call.keywords
                 if kw.arg == "export" and getattr(kw.value, "id", None) == "_export"]
    assert exporters == [("audit/transcripts.py", "register_holder")]


# --- R-REG-3: email ---------------------------------------------------------------------------------------------
def test_a_breach_notice_email_names_keys_but_no_end_customer(staff, staff_client, acme,
                                                             django_capture_on_commit_callbacks):
    from django.core import mail

    from audit import incident_services
    from billing.models import UsageEvent

    now = timezone.now()
    UsageEvent.objects.create(request_id="r" * 32, tenant=acme, key_id="acmekey1", endpoint="chat.completions",
                              model="mistral-7b", backend="vllm-a", status=200, customer_id="cust-4242",
                              created_at=now - timedelta(minutes=30))
    incident = incident_services.incident_open(
        actor=staff, title="Leaked key", summary="A key was posted publicly.", backend="vllm-a",
        became_aware_at=now - timedelta(days=1), window_start=now - timedelta(hours=1), window_end=now)
    assert "cust-4242" in staff_client.get(f"/staff/incidents/{incident.pk}/").content.decode()  # staff see it
    with django_capture_on_commit_callbacks(execute=True):
        staff_client.post(f"/staff/incidents/{incident.pk}/notify/", {"tenants": [acme.slug]})
    [message] = mail.outbox
    sent = message.subject + message.body + "".join(str(part[0]) for part in message.alternatives)
    assert "wtl_acmekey1" in sent and "cust-4242" not in sent


# --- R-REG-3: error trackers ------------------------------------------------------------------------------------
TRACKERS = ("sentry-sdk", "sentry_sdk", "raven", "rollbar", "bugsnag", "honeybadger", "airbrake", "raygun4py",
            "newrelic", "ddtrace", "elastic-apm")


def test_no_error_tracker_is_a_dependency_or_imported():
    """Errors go to our own logs (which drop bodies), never to a third-party tracker that would capture request
    data; adding one is a new sub-processor and needs the privacy policy changed first."""
    for requirements in sorted(ROOT.glob("requirements*.txt")):
        names = {line.split("==")[0].split("[")[0].strip().lower() for line in requirements.read_text().splitlines()
                 if line.strip() and not line.startswith("#")}
        assert not names & set(TRACKERS), requirements.name
    imported = {(path, alias.name) for path, tree in _product_files() for node in ast.walk(tree)
                if isinstance(node, (ast.Import, ast.ImportFrom))
                for alias in (node.names if isinstance(node, ast.Import) else [ast.alias(node.module or "")])
                if alias.name.split(".")[0].replace("_", "-") in TRACKERS or alias.name.split(".")[0] in TRACKERS}
    assert imported == set()
