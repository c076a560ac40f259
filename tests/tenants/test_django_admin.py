"""Django's admin is for looking things up: no page of it (ours or a library's) changes anything, even for a
superuser, because a change there would have no audit entry. Changes go through the services."""

from __future__ import annotations

import pytest
from allauth.account.models import EmailAddress
from allauth.mfa.models import Authenticator
from django.contrib import admin
from django_celery_beat.models import IntervalSchedule, PeriodicTask

from tests.conftest import add_totp

pytestmark = pytest.mark.django_db

ADMIN = "/staff/django-admin"


def test_a_superusers_post_cannot_make_anyone_a_superuser(staff_client, staff, alice):
    assert staff.is_superuser
    url = f"{ADMIN}/auth/user/{alice.pk}/change/"
    assert staff_client.get(url).status_code == 200  # still visible
    form = {"username": alice.username, "email": alice.email, "is_active": "on", "is_staff": "on",
            "is_superuser": "on", "date_joined_0": "2026-01-01", "date_joined_1": "00:00:00",
            "last_login_0": "", "last_login_1": "", "_save": "Save"}
    assert staff_client.post(url, form).status_code == 403
    alice.refresh_from_db()
    assert not alice.is_superuser and not alice.is_staff
    assert staff_client.post(f"{ADMIN}/auth/user/{alice.pk}/password/",
                             {"password1": "x" * 20, "password2": "x" * 20}).status_code == 403
    assert staff_client.post(f"{ADMIN}/auth/user/add/", {"username": "mallory", "password1": "x" * 20,
                                                         "password2": "x" * 20}).status_code == 403
    assert not type(alice).objects.filter(username="mallory").exists()


def test_mfa_authenticators_and_verified_emails_cannot_be_changed_or_removed(staff_client, alice):
    authenticator = add_totp(alice)
    email = EmailAddress.objects.get(user=alice)
    delete = staff_client.post(f"{ADMIN}/mfa/authenticator/{authenticator.pk}/delete/", {"post": "yes"})
    assert delete.status_code == 403
    bulk = staff_client.post(f"{ADMIN}/mfa/authenticator/", {"action": "delete_selected", "post": "yes",
                                                             "_selected_action": [authenticator.pk]})
    assert bulk.status_code in (200, 302)
    assert Authenticator.objects.filter(pk=authenticator.pk).exists()
    assert staff_client.post(f"{ADMIN}/account/emailaddress/{email.pk}/change/",
                             {"user": alice.pk, "email": "mallory@evil.example", "verified": "on",
                              "primary": "on"}).status_code == 403
    email.refresh_from_db()
    assert email.email == "alice@acme.example"


def test_periodic_tasks_cannot_be_changed(staff_client):
    every_minute = IntervalSchedule.objects.create(every=60, period=IntervalSchedule.SECONDS)
    task = PeriodicTask.objects.create(name="close-support-sessions", interval=every_minute,
                                       task="tenants.tasks.close_expired_support_sessions")
    response = staff_client.post(f"{ADMIN}/django_celery_beat/periodictask/",
                                 {"action": "disable_tasks", "_selected_action": [task.pk]})
    assert response.status_code in (200, 302)
    task.refresh_from_db()
    assert task.enabled
    assert staff_client.post(f"{ADMIN}/django_celery_beat/periodictask/{task.pk}/change/",
                             {"name": task.name, "enabled": ""}).status_code == 403
    assert staff_client.get(f"{ADMIN}/django_celery_beat/periodictask/add/").status_code == 403


def test_every_registered_admin_is_read_only(rf, staff):
    request = rf.get("/")
    request.user = staff
    for model, model_admin in admin.site._registry.items():
        label = model._meta.label
        assert not model_admin.has_add_permission(request), label
        assert not model_admin.has_change_permission(request), label
        assert not model_admin.has_delete_permission(request), label
        assert model_admin.get_actions(request) == {}, label
        assert model_admin.has_view_permission(request), label
