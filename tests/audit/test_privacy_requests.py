"""Individuals' requests (R-DSR-1, R-DSR-2): opened, tracked (received, due in 30 days, status), carried out or
refused, in the tenant console, the staff console and the management API; every step audited, and the request
kept afterwards. Isolation, roles and malformed input for each surface."""

from __future__ import annotations

import json
from datetime import timedelta

import pytest
from django.test import Client
from django.urls import reverse

from audit import privacy_requests as services
from audit.models import AuditEntry, CustomerAnnotation, PrivacyRequest
from audit.personal_data import holders
from tests.conftest import add_totp, sign_in

CUSTOMER = "crm-4471"


def _open(tenant, kind="access", **kwargs):
    return services.privacy_request_open(tenant=tenant, customer_id=kwargs.pop("customer_id", CUSTOMER), kind=kind,
                                         channel="console", **kwargs)


# --- services --------------------------------------------------------------------------------------
def test_a_request_is_due_thirty_days_after_it_is_received_and_the_receipt_is_audited(acme, alice):
    privacy_request = _open(acme, actor=alice)
    assert privacy_request.status == "received"
    assert privacy_request.due_at - privacy_request.received_at == timedelta(days=30)
    entry = AuditEntry.objects.get(action="privacy_request.received")
    assert entry.tenant_id == acme.pk and entry.actor_id == alice.pk
    assert CUSTOMER not in json.dumps(entry.data)  # a keyed digest, never the id itself
    assert entry.data["customer"] == services.customer_digest(str(acme.pk), CUSTOMER)


@pytest.mark.parametrize("customer_id", ["", None, "x" * 65, "has space", "<script>", 42, "~erased"])
def test_a_malformed_customer_id_is_refused(acme, customer_id):
    with pytest.raises(services.ValidationError):
        _open(acme, customer_id=customer_id)
    assert not PrivacyRequest.objects.exists()


def test_the_erasure_marker_is_no_id_anyone_can_send():
    """Erased records carry ``~erased``: no request, correction or API call may name it, or one request could
    reach every erased customer's records (or a caller file new records among them)."""
    from billing.personal_data import ERASED as ACCESS_ERASED
    from core import contract
    from inference.personal_data import ERASED as CONVERSATION_ERASED

    for marker in (ACCESS_ERASED, CONVERSATION_ERASED):
        assert not contract.valid_customer_id(marker)
        with pytest.raises(services.ValidationError):
            services.valid_customer_id(marker)


def test_a_correction_needs_a_different_valid_id_and_only_a_correction_takes_one(acme):
    with pytest.raises(services.ValidationError):
        _open(acme, kind="correct")
    with pytest.raises(services.ValidationError):
        _open(acme, kind="correct", new_customer_id=CUSTOMER)
    with pytest.raises(services.ValidationError):
        _open(acme, kind="access", new_customer_id="crm-1")
    with pytest.raises(services.ValidationError):
        _open(acme, kind="delete-everything")


def test_an_annotation_is_kept_exported_and_then_erased_and_the_requests_stay_on_record(acme, alice):
    annotate = _open(acme, kind="annotate")
    services.privacy_request_annotate(privacy_request=annotate, text="I never agreed to the upgrade.", actor=alice)
    assert annotate.status == "completed"
    document = services.privacy_request_export(privacy_request=_open(acme), actor=alice)
    assert document["customer_id"] == CUSTOMER
    assert [n["text"] for n in document["holdings"]["annotations"]] == ["I never agreed to the upgrade."]
    assert {h.name for h in holders()} <= set(document["holdings"])
    assert len(document["requests"]) == 2

    erase = _open(acme, kind="erase")
    services.privacy_request_erase(privacy_request=erase, actor=alice)
    assert erase.outcome["annotations"] == 1
    assert not CustomerAnnotation.objects.exists()
    assert PrivacyRequest.objects.filter(tenant=acme).count() == 3  # R-DSR-2: the requests themselves are kept
    erased = AuditEntry.objects.get(action="privacy_request.erased")
    assert erased.data["outcome"]["annotations"] == 1
    assert "upgrade" not in json.dumps([e.data for e in AuditEntry.objects.all()])


def test_a_correction_moves_the_records_to_the_right_id(acme, alice):
    services.privacy_request_annotate(privacy_request=_open(acme, kind="annotate"), text="statement", actor=alice)
    correct = _open(acme, kind="correct", new_customer_id="crm-9000")
    services.privacy_request_correct(privacy_request=correct, actor=alice)
    assert CustomerAnnotation.objects.get().customer_id == "crm-9000"
    assert AuditEntry.objects.filter(action="privacy_request.corrected").count() == 1


def test_a_done_request_cannot_be_carried_out_again_and_a_refusal_needs_a_reason(acme, alice):
    erase = _open(acme, kind="erase")
    with pytest.raises(services.ValidationError):
        services.privacy_request_refuse(privacy_request=erase, reason="   ", actor=alice)
    services.privacy_request_refuse(privacy_request=erase, reason="Identity not verified.", actor=alice)
    assert erase.status == "refused" and erase.refusal_reason == "Identity not verified."
    with pytest.raises(services.ValidationError):
        services.privacy_request_erase(privacy_request=erase, actor=alice)
    with pytest.raises(services.ValidationError):
        services.privacy_request_annotate(privacy_request=_open(acme, kind="annotate"), text="", actor=alice)
    with pytest.raises(services.ValidationError):
        services.privacy_request_export(privacy_request=_open(acme, kind="erase"), actor=alice)


def test_a_request_carried_out_twice_at_once_is_done_once(acme, alice):
    """A double-submitted form (or two staff at once) each hold the request as it was when the page loaded: the
    second must find it done, not annotate twice, nor mark a refused request completed."""
    annotate = _open(acme, kind="annotate")
    stale = PrivacyRequest.objects.get(pk=annotate.pk)
    services.privacy_request_annotate(privacy_request=annotate, text="First.", actor=alice)
    with pytest.raises(services.ValidationError):
        services.privacy_request_annotate(privacy_request=stale, text="Second.", actor=alice)
    assert CustomerAnnotation.objects.count() == 1

    erase = _open(acme, kind="erase")
    stale = PrivacyRequest.objects.get(pk=erase.pk)
    services.privacy_request_refuse(privacy_request=erase, reason="Identity not verified.", actor=alice)
    with pytest.raises(services.ValidationError):
        services.privacy_request_erase(privacy_request=stale, actor=alice)
    with pytest.raises(services.ValidationError):
        services.privacy_request_refuse(privacy_request=stale, reason="Again.", actor=alice)
    assert PrivacyRequest.objects.get(pk=erase.pk).status == "refused"
    assert not AuditEntry.objects.filter(action="privacy_request.erased").exists()


def test_an_export_holds_only_the_tenants_own_records(acme, bluegum, alice, bob):
    services.privacy_request_annotate(privacy_request=_open(bluegum, kind="annotate"), text="bluegum's", actor=bob)
    document = services.privacy_request_export(privacy_request=_open(acme), actor=alice)
    assert document["holdings"]["annotations"] == []
    assert [r["id"] for r in document["requests"]] == [document["privacy_request"]]


def test_a_large_copy_is_written_out_in_chunks_and_equals_the_document(acme, alice, monkeypatch):
    """The copy is streamed from each holder's records as they are read, so a customer id holding millions of
    access records never sits whole in memory; the bytes are the same document, and the counts are recorded."""
    import uuid as uuid_

    from django.utils import timezone

    from billing.models import UsageEvent

    UsageEvent.objects.bulk_create([UsageEvent(
        request_id=uuid_.uuid4().hex, tenant=acme, key_id="k3y", endpoint="chat.completions", model="m",
        backend="sim-a", status=200, prompt_tokens=i, completion_tokens=1, duration_ms=1.0, customer_id=CUSTOMER,
        created_at=timezone.now(), prompt_sha256="", reply_sha256="") for i in range(300)])
    services.privacy_request_annotate(privacy_request=_open(acme, kind="annotate"), text="Ünïcode \"quoted\"",
                                      actor=alice)
    monkeypatch.setattr(services, "CHUNK_BYTES", 4096)
    access = _open(acme)
    chunks = services.privacy_request_export(privacy_request=access, actor=alice, stream=True)
    expected = services.export_document(access)
    assert access.status == "completed" and access.outcome["access_log"] == 300
    assert access.outcome["annotations"] == 1
    parts = list(chunks)
    assert len(parts) > 5 and max(len(p) for p in parts) < 4096 + 1024
    streamed = json.loads(b"".join(parts))
    assert {k: v for k, v in streamed.items() if k != "generated_at"} == {
        k: v for k, v in expected.items() if k != "generated_at"}
    assert len(streamed["holdings"]["access_log"]) == 300


# --- tenant console --------------------------------------------------------------------------------
def _console(tenant):
    return reverse("tenant_privacy_requests", args=[tenant.slug])


def test_an_owner_records_a_request_and_downloads_the_copy(owner_client, acme):
    response = owner_client.post(_console(acme), {"kind": "access", "customer_id": CUSTOMER, "note": "TKT-1"})
    assert response.status_code == 302
    privacy_request = PrivacyRequest.objects.get()
    page = owner_client.get(response["Location"])
    assert page.status_code == 200 and CUSTOMER in page.content.decode()
    download = owner_client.post(response["Location"], {"step": "carry_out"})
    assert download.status_code == 200 and download["Content-Type"].startswith("application/json")
    assert download["Cache-Control"] == "no-store"
    assert download.streaming  # written out as read: a customer id can hold millions of records
    assert json.loads(b"".join(download))["privacy_request"] == str(privacy_request.pk)
    privacy_request.refresh_from_db()
    assert privacy_request.status == "completed"
    listing = owner_client.get(_console(acme)).content.decode()
    assert "Completed" in listing


def test_a_malformed_console_request_is_a_form_error(owner_client, acme):
    response = owner_client.post(_console(acme), {"kind": "access", "customer_id": "not valid!"})
    assert response.status_code == 400
    assert "customer_id" in response.content.decode()
    assert not PrivacyRequest.objects.exists()


@pytest.mark.parametrize("role", ["developer", "billing", "agent"])
def test_other_roles_may_not_open_the_page(acme, member_of, role):
    client = sign_in(Client(), member_of(acme, role))
    assert client.get(_console(acme)).status_code == 403
    assert client.post(_console(acme), {"kind": "access", "customer_id": CUSTOMER}).status_code == 403
    assert not PrivacyRequest.objects.exists()


def test_another_tenants_request_is_a_404_and_signed_out_visitors_sign_in(owner_client, acme, bluegum, client):
    theirs = _open(bluegum, kind="erase")
    detail = reverse("tenant_privacy_request", args=[acme.slug, theirs.pk])
    assert owner_client.get(detail).status_code == 404
    assert owner_client.post(detail, {"step": "carry_out"}).status_code == 404
    assert owner_client.get(_console(bluegum)).status_code == 404
    theirs.refresh_from_db()
    assert theirs.status == "received"
    assert client.get(_console(acme)).status_code == 302


def test_carrying_out_needs_a_recent_reauthentication(acme, alice):
    add_totp(alice)
    stale = sign_in(Client(), alice, reauthenticated=False)
    privacy_request = _open(acme, kind="erase")
    response = stale.post(reverse("tenant_privacy_request", args=[acme.slug, privacy_request.pk]),
                          {"step": "carry_out"})
    assert response.status_code == 302 and "reauthenticate" in response["Location"]
    privacy_request.refresh_from_db()
    assert privacy_request.status == "received"


def test_refusing_in_the_console_keeps_the_reason(owner_client, acme):
    privacy_request = _open(acme, kind="erase")
    url = reverse("tenant_privacy_request", args=[acme.slug, privacy_request.pk])
    assert owner_client.post(url, {"step": "refuse", "reason": ""}).status_code == 400
    assert owner_client.post(url, {"step": "refuse", "reason": "Not our customer."}).status_code == 302
    privacy_request.refresh_from_db()
    assert (privacy_request.status, privacy_request.refusal_reason) == ("refused", "Not our customer.")


# --- staff console ---------------------------------------------------------------------------------
def test_staff_track_every_tenants_requests_without_content(staff_client, acme, bluegum, alice):
    services.privacy_request_annotate(privacy_request=_open(acme, kind="annotate"), text="secret statement",
                                      actor=alice)
    overdue = _open(bluegum, kind="erase")
    PrivacyRequest.objects.filter(pk=overdue.pk).update(due_at=overdue.received_at - timedelta(days=1))
    page = staff_client.get(reverse("staff_privacy_requests")).content.decode()
    assert acme.name in page and bluegum.name in page and "Overdue" in page
    assert "secret statement" not in page
    only = staff_client.get(reverse("staff_privacy_requests"), {"overdue": "on"}).content.decode()
    assert bluegum.name in only and acme.name not in only


def test_the_staff_page_is_hidden_from_tenant_members(owner_client):
    assert owner_client.get(reverse("staff_privacy_requests")).status_code == 404


# --- management API --------------------------------------------------------------------------------
def test_the_api_opens_carries_out_and_refuses(api_client, acme, management_key):
    api_client.credentials(HTTP_AUTHORIZATION=f"Bearer {management_key(acme)}")
    created = api_client.post("/api/v1/privacy-requests", {"kind": "access", "customer_id": CUSTOMER},
                              format="json")
    assert created.status_code == 201, created.content
    body = created.json()
    assert body["status"] == "received" and body["channel"] == "api"
    listed = api_client.get("/api/v1/privacy-requests").json()
    assert [r["id"] for r in listed] == [body["id"]]
    document = api_client.post(f"/api/v1/privacy-requests/{body['id']}/carry-out", {}, format="json")
    assert document.status_code == 200 and document.streaming and document["Cache-Control"] == "no-store"
    assert json.loads(b"".join(document))["customer_id"] == CUSTOMER
    assert api_client.get(f"/api/v1/privacy-requests/{body['id']}").json()["status"] == "completed"
    erase = api_client.post("/api/v1/privacy-requests", {"kind": "erase", "customer_id": CUSTOMER}, format="json")
    refused = api_client.post(f"/api/v1/privacy-requests/{erase.json()['id']}/refuse", {"reason": "duplicate"},
                              format="json")
    assert refused.status_code == 200 and refused.json()["status"] == "refused"
    assert AuditEntry.objects.filter(action__startswith="privacy_request.", api_key_id__gt="").count() == 4


def test_the_api_refuses_bad_input_other_tenants_and_read_only_keys(api_client, acme, bluegum, management_key):
    theirs = _open(bluegum, kind="erase")
    api_client.credentials(HTTP_AUTHORIZATION=f"Bearer {management_key(acme)}")
    assert api_client.post("/api/v1/privacy-requests", {"kind": "access", "customer_id": "a b"},
                           format="json").status_code == 400
    assert api_client.post("/api/v1/privacy-requests", {"kind": "nope", "customer_id": CUSTOMER},
                           format="json").status_code == 400
    assert api_client.get(f"/api/v1/privacy-requests/{theirs.pk}").status_code == 404
    assert api_client.post(f"/api/v1/privacy-requests/{theirs.pk}/carry-out", {}, format="json").status_code == 404
    theirs.refresh_from_db()
    assert theirs.status == "received"
    api_client.credentials(HTTP_AUTHORIZATION=f"Bearer {management_key(acme, write=False)}")
    assert api_client.get("/api/v1/privacy-requests").status_code == 200
    assert api_client.post("/api/v1/privacy-requests", {"kind": "access", "customer_id": CUSTOMER},
                           format="json").status_code == 403
    api_client.credentials()
    assert api_client.get("/api/v1/privacy-requests").status_code == 401


def test_every_model_keyed_by_an_end_customer_has_a_holder():
    """New end-customer data cannot be forgotten by individuals' requests: a model with a ``customer_id`` column
    is answered for by a registered holder (the requests and statements are the service's own)."""
    from django.apps import apps

    from audit.personal_data import covered_models

    own = {"audit.privacyrequest", "audit.customerannotation"}
    keyed = {model._meta.label_lower for model in apps.get_models()
             if any(field.name == "customer_id" for field in model._meta.get_fields())}
    assert "billing.usageevent" in keyed
    assert keyed - own - covered_models() == set()


def test_open_requests_are_listed_first_however_many_are_done(owner_client, staff_client, api_client, acme,
                                                              management_key, alice):
    """The lists hold a page of requests; an open one (its 30 days running) must never fall behind done ones."""
    from tenants.views import privacy_requests as views

    for _ in range(3):
        services.privacy_request_refuse(privacy_request=_open(acme, kind="erase"), reason="Duplicate.", actor=alice)
        services.privacy_request_export(privacy_request=_open(acme), actor=alice)
    still_open = _open(acme, kind="erase", customer_id="crm-open-1")
    views.PAGE = 2
    try:
        page = owner_client.get(_console(acme)).content.decode()
        assert "crm-open-1" in page
        staff_page = staff_client.get(reverse("staff_privacy_requests")).content.decode()
        assert "<td>Received</td>" in staff_page
    finally:
        views.PAGE = 100
    api_client.credentials(HTTP_AUTHORIZATION=f"Bearer {management_key(acme)}")
    listed = api_client.get("/api/v1/privacy-requests").json()
    assert listed[0]["id"] == str(still_open.pk)
    assert [r["status"] for r in listed[1:]].count("received") == 0
