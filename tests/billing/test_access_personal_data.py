"""Individuals' requests reach the access log (R-DSR-1, R-DSR-2): a copy lists the customer's access records
(metadata and digests, never text); erasure de-identifies them and correction moves them, and the sealed trail
still verifies because each change records the batch's new digest (``access.amended``), while an edit that did
not come through a request still fails verification."""

from __future__ import annotations

import hashlib
import uuid
from datetime import timedelta

import pytest
from django.utils import timezone

from audit import privacy_requests as dsr
from audit.models import AuditEntry
from billing import access_log
from billing.models import UsageEvent
from billing.personal_data import ERASED

pytestmark = pytest.mark.django_db


def _record(tenant, customer: str, i: int) -> UsageEvent:
    return UsageEvent.objects.create(
        request_id=uuid.uuid4().hex, tenant=tenant, key_id="k3y", endpoint="chat.completions", model="m",
        backend="sim-a", status=200, prompt_tokens=10 + i, completion_tokens=5, duration_ms=40.0,
        created_at=timezone.now() - timedelta(minutes=10 - i), customer_id=customer,
        prompt_sha256=hashlib.sha256(f"p{i}".encode()).hexdigest(), reply_sha256="")


def _open(tenant, kind, **kwargs):
    return dsr.privacy_request_open(tenant=tenant, customer_id="crm-7", kind=kind, channel="console", **kwargs)


def test_a_copy_lists_the_customers_access_records_and_no_one_elses(acme, bluegum):
    mine = [_record(acme, "crm-7", i) for i in range(3)]
    _record(acme, "crm-8", 4)
    _record(bluegum, "crm-7", 5)
    document = dsr.privacy_request_export(privacy_request=_open(acme, "access"))
    records = document["holdings"]["access_log"]
    assert [r["request_id"] for r in records] == [r.request_id for r in mine]
    assert records[0]["prompt_sha256"] == mine[0].prompt_sha256
    assert "customer_id" not in records[0] and "tenant" not in records[0]


def test_erasure_de_identifies_sealed_records_and_the_trail_still_verifies(acme):
    rows = [_record(acme, "crm-7" if i % 2 else "crm-8", i) for i in range(6)]
    assert access_log.access_seal(batch=4) == 6
    erase = _open(acme, "erase")
    dsr.privacy_request_erase(privacy_request=erase)
    assert erase.outcome["access_log"] == 3
    assert UsageEvent.objects.filter(customer_id="crm-7").count() == 0
    assert UsageEvent.objects.filter(customer_id=ERASED).count() == 3
    assert UsageEvent.objects.filter(customer_id="crm-8").count() == 3
    assert AuditEntry.objects.filter(action=access_log.AMEND_ACTION).count() == 2  # both batches held crm-7
    assert access_log.access_verify().broken is None
    # The bill is untouched: same rows, same tokens.
    assert sum(UsageEvent.objects.values_list("prompt_tokens", flat=True)) == sum(r.prompt_tokens for r in rows)


def test_an_edit_outside_a_request_still_breaks_verification_after_an_amendment(acme):
    [_record(acme, "crm-7", i) for i in range(3)]
    access_log.access_seal(batch=10)
    dsr.privacy_request_erase(privacy_request=_open(acme, "erase"))
    UsageEvent.objects.filter(pk=UsageEvent.objects.order_by("id").first().pk).update(prompt_tokens=1)
    broken = access_log.access_verify().broken
    assert broken is not None and "edited" in broken


def test_correction_moves_sealed_and_unsealed_records(acme):
    [_record(acme, "crm-7", i) for i in range(2)]
    access_log.access_seal(batch=10)
    _record(acme, "crm-7", 3)  # not sealed yet: sealed later with the corrected id
    dsr.privacy_request_correct(privacy_request=_open(acme, "correct", new_customer_id="crm-77"))
    assert UsageEvent.objects.filter(customer_id="crm-77").count() == 3
    access_log.access_seal(batch=10)
    assert access_log.access_verify().broken is None


def test_an_erasure_does_not_vouch_for_rows_edited_before_it(acme):
    """An amendment re-digests whole batches: one recorded over rows someone had already edited would make the
    edit pass verification. A batch that no longer matched before the request is left broken."""
    [_record(acme, "crm-7" if i % 2 else "crm-8", i) for i in range(4)]
    access_log.access_seal(batch=10)
    UsageEvent.objects.filter(customer_id="crm-8").update(prompt_tokens=1)  # tampering, outside any request
    assert "edited" in access_log.access_verify().broken
    erase = _open(acme, "erase")
    dsr.privacy_request_erase(privacy_request=erase)
    assert erase.outcome["access_log"] == 2  # the erasure itself is still carried out
    assert UsageEvent.objects.filter(customer_id="crm-7").count() == 0
    assert not AuditEntry.objects.filter(action=access_log.AMEND_ACTION).exists()
    broken = access_log.access_verify().broken
    assert broken is not None and "edited" in broken


def test_a_second_change_to_an_amended_batch_is_amended_again(acme):
    [_record(acme, "crm-7", i) for i in range(2)]
    [_record(acme, "crm-9", i) for i in range(2, 4)]
    access_log.access_seal(batch=10)
    dsr.privacy_request_correct(privacy_request=_open(acme, "correct", new_customer_id="crm-77"))
    dsr.privacy_request_erase(privacy_request=dsr.privacy_request_open(
        tenant=acme, customer_id="crm-9", kind="erase", channel="console"))
    assert AuditEntry.objects.filter(action=access_log.AMEND_ACTION).count() == 2
    assert access_log.access_verify().broken is None


def test_an_amendment_counts_only_the_tenants_own_rows_of_a_shared_batch(acme, bluegum):
    """A batch mixes tenants: the amended digest must change acme's crm-7 rows only, not bluegum's crm-7."""
    for i in range(4):
        _record(acme if i % 2 else bluegum, "crm-7", i)
    access_log.access_seal(batch=10)
    dsr.privacy_request_erase(privacy_request=_open(acme, "erase"))
    assert UsageEvent.objects.filter(tenant=bluegum, customer_id="crm-7").count() == 2
    assert access_log.access_verify().broken is None
