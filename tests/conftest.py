"""Shared fixtures. Named people, as in the behaviour they prove: alice (tenant Acme) and bob (tenant Bluegum)
must never see each other's data.

The suite runs on SQLite and the in-process Redis stand-in by default, and on PostgreSQL and Redis when
DATABASE_URL / REDIS_URL are set (as CI does).
"""

from __future__ import annotations

import time
from collections.abc import Iterator

import pytest
from allauth.account.models import EmailAddress
from django.contrib.auth import get_user_model

from core.redis import get_redis
from tests.servers import RunningServer, run_portal

PASSWORD = "correct-horse-battery-staple"


# --- Redis hygiene ---------------------------------------------------------------------------------
def _clear_redis_prefix() -> None:
    from django.conf import settings

    client = get_redis()
    keys = list(client.scan_iter(match=f"{settings.REDIS_KEY_PREFIX}*", count=1000))
    if keys:
        client.delete(*keys)


@pytest.fixture(autouse=True)
def _isolated_redis() -> None:
    """Each test starts with none of the test prefix's keys (real Redis or the stand-in), and with the key
    snapshot marked complete so the data plane trusts it (tests of the recovery path delete the marker)."""
    from core.contract import snapshot_ready_key

    _clear_redis_prefix()
    get_redis().set(snapshot_ready_key(), "1")


@pytest.fixture(autouse=True)
def _seeded_plans(request) -> None:
    """The plans billing's migrations seed (Trial, the default, and Internal) exist in every test that uses
    the database, as in every installation: a transactional test empties the tables, migration rows included,
    so they are put back with the migration's own function."""
    marker = request.node.get_closest_marker("django_db")
    if marker is None and not {"db", "transactional_db"} & set(request.fixturenames):
        return
    import importlib

    from django.apps import apps

    request.getfixturevalue("_django_db_helper")
    importlib.import_module("billing.migrations.0006_seed_trial_and_internal_plans").seed(apps, None)


@pytest.fixture
def internal_plan(db):
    """Internal: every limit far above what a test sends (the `make run` demo's plan)."""
    from billing.models import Plan

    return Plan.objects.get(slug="internal")


@pytest.fixture
def unthrottled(internal_plan, django_capture_on_commit_callbacks):
    """unthrottled(tenant): put ``tenant`` on the Internal plan, for tests that send more than a Trial allows."""
    from billing.services import tenant_quota_set

    def lift(tenant):
        with django_capture_on_commit_callbacks(execute=True):
            tenant_quota_set(tenant=tenant, plan=internal_plan)
        return tenant

    return lift


@pytest.fixture(scope="session", autouse=True)
def _tasks_run_in_the_test() -> None:
    """Tasks the code queues (``.delay``) run at once, in the test's process: no worker runs beside the suite.
    Tests of the worker itself start one (``tests.services.portal_processes``)."""
    from portal.celery import app

    app.conf.task_always_eager = True


@pytest.fixture(scope="session", autouse=True)
def _audit_trigger_lifted_for_flush() -> None:
    """Transactional tests are cleaned up by a flush, which on SQLite is a DELETE that the audit trail's
    append-only trigger refuses (PostgreSQL flushes with TRUNCATE, which row triggers don't see). Only that
    flush lifts the trigger and puts it back in the same transaction; the tests themselves run with it on."""
    from django.db import connection

    if connection.vendor != "sqlite":
        return
    from django.db.backends.sqlite3.base import DatabaseOperations

    from audit import guard

    original = DatabaseOperations.sql_flush

    def sql_flush(self, style, tables, **kwargs):
        statements = original(self, style, tables, **kwargs)
        if guard.TABLE not in tables:
            return statements
        return [*guard.statements("sqlite", install=False), *statements, *guard.statements("sqlite", install=True)]

    DatabaseOperations.sql_flush = sql_flush


@pytest.fixture(autouse=True)
def _fast_password_hashing(settings) -> None:
    # PBKDF2's deliberate slowness protects stored passwords; tests only need it to be correct.
    settings.PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]


# --- People and tenants ----------------------------------------------------------------------------
def make_user(email: str, *, staff: bool = False):
    user = get_user_model().objects.create_user(
        username=email.split("@")[0], email=email, password=PASSWORD, is_staff=staff, is_superuser=staff
    )
    EmailAddress.objects.create(user=user, email=email, verified=True, primary=True)
    return user


@pytest.fixture
def alice(db):
    return make_user("alice@acme.example")


@pytest.fixture
def bob(db):
    return make_user("bob@bluegum.example")


@pytest.fixture
def acme(alice, django_capture_on_commit_callbacks):
    from tenants.services import tenant_create

    with django_capture_on_commit_callbacks(execute=True):
        return tenant_create(name="Acme Contact", owner=alice, billing_email="billing@acme.example")


@pytest.fixture
def bluegum(bob, django_capture_on_commit_callbacks):
    from tenants.services import tenant_create

    with django_capture_on_commit_callbacks(execute=True):
        return tenant_create(name="Bluegum Calls", owner=bob, billing_email="billing@bluegum.example")


@pytest.fixture
def issue_key(django_capture_on_commit_callbacks):
    """issue_key(tenant, **kwargs) -> plaintext key, published to Redis as the control plane would."""
    from tenants.services import api_key_create

    def issue(tenant, **kwargs) -> str:
        with django_capture_on_commit_callbacks(execute=True):
            return api_key_create(tenant=tenant, name=kwargs.pop("name", "test key"), **kwargs).plaintext

    return issue


# --- Servers ---------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def simulator() -> Iterator:
    from tests.fakes.vllm import run_simulator

    with run_simulator() as sim:
        yield sim


@pytest.fixture
def backend(simulator, db, django_capture_on_commit_callbacks):
    """A Backend row for the module's simulator, published for the data plane."""
    from inference.models import Backend
    from inference.services import backends_publish

    backend = Backend.objects.create(name="sim-a", base_url=simulator.base_url)
    backends_publish()
    return backend


@pytest.fixture
def stripe_fake(settings) -> Iterator:
    """The Stripe stand-in (tests/fakes/stripe) on a free port, with the settings pointing the gateway at it.

    No webhook URL: tests read ``stripe_fake.events`` and post ``stripe_fake.signed(event)`` themselves (or set
    ``stripe_fake.webhook_url`` to a running portal's webhook endpoint)."""
    from billing import stripe_gateway
    from tests.fakes.stripe import StripeFake

    with StripeFake() as fake:
        settings.STRIPE_SECRET_KEY = fake.api_key
        settings.STRIPE_API_BASE = fake.base_url
        settings.STRIPE_WEBHOOK_SECRET = fake.webhook_secret
        stripe_gateway.reset_client()
        yield fake
    stripe_gateway.reset_client()


@pytest.fixture(scope="module")
def portal_server() -> Iterator[RunningServer]:
    with run_portal() as server:
        yield server


@pytest.fixture(scope="session")
def django_db_modify_db_settings(request, django_db_modify_db_settings_parallel_suffix) -> Iterator[None]:
    """A session that serves the portal from threads (``portal_server``: browser and gateway tests) keeps its SQLite
    test database in a file of its own. Django's default in-memory test database is one shared cache, where a
    second connection writing at the same time fails at once with "database table is locked" instead of waiting
    its turn (the busy timeout does not apply there): a Checkout return page racing Stripe's webhooks did. In a file,
    connections wait as they do in production. Other sessions keep the faster in-memory database."""
    import shutil
    import tempfile
    from pathlib import Path

    from django.conf import settings

    db = settings.DATABASES["default"]
    serves = any("portal_server" in getattr(item, "fixturenames", ()) for item in request.session.items)
    if not db["ENGINE"].endswith("sqlite3") or not serves:
        yield
        return
    folder = Path(tempfile.mkdtemp(prefix="wattle-test-db-"))
    db.setdefault("TEST", {})["NAME"] = str(folder / "db.sqlite3")
    # A throwaway database needs no durability; WAL lets readers go on beside a writer.
    db["OPTIONS"] = {**db.get("OPTIONS", {}), "init_command": "PRAGMA synchronous=OFF; PRAGMA journal_mode=WAL"}
    yield
    shutil.rmtree(folder, ignore_errors=True)


def published_caller(key_id: str, client=None):
    """What the data plane learns of a key from Redis: its published record joined with its tenant's."""
    from core import contract
    from inference.gateway.auth import KeyRecord

    client = client or get_redis()
    key = contract.KeyRecord.decode(client.get(contract.api_key_record_key(key_id)))
    tenant = contract.TenantRecord.decode(client.get(contract.tenant_record_key(key.tenant)))
    return KeyRecord.join(key, tenant)


def wait_for(predicate, timeout: float = 5.0, interval: float = 0.02):
    """Poll until ``predicate()`` is truthy; return its value or fail the test."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(interval)
    pytest.fail(f"condition not met within {timeout}s")


def ingested(expected: int, timeout: float = 10.0) -> list:
    """Ingest usage as the worker would until ``expected`` events are stored, and check there are no more.
    (The gateway emits an event just after its response completes: a client can finish a moment earlier.)"""
    from billing.models import UsageEvent
    from billing.services import usage_ingest

    def done():
        usage_ingest()
        return UsageEvent.objects.count() >= expected

    wait_for(done, timeout=timeout)
    time.sleep(0.1)
    usage_ingest()
    assert UsageEvent.objects.count() == expected
    return list(UsageEvent.objects.order_by("created_at"))


@pytest.fixture
def gateway_ready(portal_server, backend):
    """The portal is up and its data plane sees the backend as healthy."""
    from inference.gateway.app import gateway

    def ready():
        pool = gateway.pool
        return pool is not None and any(b.healthy and b.models for b in pool.backends.values())

    wait_for(ready, timeout=10)
    return portal_server


# --- Accounts: roles, MFA, re-authentication, staff ------------------------------------------------
def add_totp(user):
    """Give ``user`` an authenticator app (what the MFA rules check for owners and admins)."""
    from allauth.mfa.models import Authenticator

    return Authenticator.objects.create(user=user, type=Authenticator.Type.TOTP, data={"secret": "JBSWY3DPEHPK3PXP"})


def add_passkey(user):
    from allauth.mfa.models import Authenticator

    return Authenticator.objects.create(user=user, type=Authenticator.Type.WEBAUTHN,
                                        data={"name": "test key", "credential": {}})


def sign_in(client, user, *, reauthenticated: bool = True, passkey_used: bool = False):
    """Log ``client`` in as ``user`` the way allauth would leave the session: with its authentication records
    (a recent re-authentication unless told otherwise, and a passkey use for staff)."""
    from allauth.account.internal.flows.login import (
        _AUTHENTICATION_METHODS_USER_SESSION_KEY,
        AUTHENTICATION_METHODS_SESSION_KEY,
    )

    client.force_login(user)
    session = client.session
    records = [{"method": "password", "at": time.time(), "reauthenticated": reauthenticated}]
    if passkey_used:
        records.append({"method": "mfa", "at": time.time(), "type": "webauthn"})
    session[AUTHENTICATION_METHODS_SESSION_KEY] = records
    session[_AUTHENTICATION_METHODS_USER_SESSION_KEY] = str(user.pk)
    session.save()
    return client


@pytest.fixture
def member_of(django_capture_on_commit_callbacks):
    """member_of(tenant, role) -> a new verified user with that role in ``tenant`` (and MFA when the role
    needs it)."""
    from tenants.models import Membership, Role

    def make(tenant, role: str, *, email: str | None = None, mfa: bool | None = None):
        user = make_user(email or f"{role}-{tenant.slug}@example.com")
        Membership.objects.create(tenant=tenant, user=user, role=role)
        if mfa if mfa is not None else role in (Role.OWNER, Role.ADMIN):
            add_totp(user)
        return user

    return make


@pytest.fixture
def owner_client(db, alice, acme):
    """Alice, owner of Acme, signed in with an authenticator app and a fresh re-authentication (a client of
    her own, apart from ``client``)."""
    from django.test import Client

    add_totp(alice)
    return sign_in(Client(), alice)


@pytest.fixture
def staff(db):
    user = make_user("ops@wattle.example", staff=True)
    add_passkey(user)
    return user


@pytest.fixture
def staff_client(staff):
    from django.test import Client

    return sign_in(Client(), staff, passkey_used=True)


@pytest.fixture
def api_client():
    from rest_framework.test import APIClient

    return APIClient()


@pytest.fixture
def management_key(issue_key):
    """management_key(tenant, write=True) -> a plaintext key with the management scopes."""

    def issue(tenant, *, write: bool = True, **kwargs) -> str:
        scopes = ["management:read", "management:write"] if write else ["management:read"]
        return issue_key(tenant, scopes=kwargs.pop("scopes", scopes), **kwargs)

    return issue


@pytest.fixture(autouse=True)
def _clear_cache() -> None:
    """Rate limits and throttles count in the cache: each test starts from zero. (With Redis, the cache keys
    carry the test prefix and ``_isolated_redis`` already removed them.)"""
    from django.conf import settings
    from django.core.cache import cache

    from portal.views import readiness

    if not settings.REDIS_URL:
        cache.clear()
    readiness.clear()  # /readyz keeps its last result a second: a test must not see the previous one's


# --- The data plane's limiter, driven directly -----------------------------------------------------
class LimiterDriver:
    """Real admissions through ``inference.gateway.limits.Limiter`` (its Lua scripts, on the Redis the tests
    use), for the key records the control plane published, at a clock the test chooses."""

    def __init__(self, now: float) -> None:
        self.now = now

    def _record(self, plaintext: str):
        from tenants import keys

        return published_caller(keys.parse_key(plaintext)[0])

    def _run(self, work):
        import asyncio

        from core.redis import new_async_redis
        from inference.gateway.limits import Limiter

        async def main():
            client = new_async_redis()
            try:
                return await work(Limiter(client, clock=lambda: self.now))
            finally:
                await client.aclose()

        return asyncio.run(main())

    def admit(self, plaintext: str, *, tokens: int, spend: int = 0):
        record = self._record(plaintext)

        async def work(limiter):
            return await limiter.admit(record, tokens=tokens, spend=spend)

        return self._run(work)

    def settle(self, admission, *, tokens: int, spend: int = 0) -> None:
        async def work(limiter):
            limiter.settle(admission, tokens=tokens, spend=spend)
            await limiter._flush_settlements()

        self._run(work)


@pytest.fixture
def limiter_at():
    """limiter_at(now) -> a LimiterDriver whose clock stands at ``now`` (epoch seconds)."""
    return LimiterDriver
