"""Control-plane changes to the backend pool. The data plane reads the published list from Redis."""

from __future__ import annotations

import logging
import time
import urllib.error
import urllib.request
from typing import TYPE_CHECKING

import orjson
from django.conf import settings
from django.db import transaction

from audit.services import record
from core import contract
from core.backend_urls import check_backend_url
from core.redis import get_redis
from inference.models import Backend

if TYPE_CHECKING:
    from django.contrib.auth.models import AbstractBaseUser
    from django.http import HttpRequest

logger = logging.getLogger("wattle.inference")


def _publishable(backend: Backend) -> bool:
    try:
        check_backend_url(backend.base_url, resolve=False)
    except ValueError as exc:
        # Only a row written around backend_save gets here; the data plane must never call it.
        logger.error("backend %s left out of the published pool: %s", backend.name, exc)
        return False
    return True


def backends_publish() -> list[contract.BackendRecord]:
    """Write the backends to Redis for every data-plane worker (never one at a link-local address)."""
    items = [
        contract.BackendRecord(
            name=b.name, url=b.base_url.rstrip("/"), api_key=b.api_key, models=tuple(b.served_models or ()),
            region=b.region, weight=b.weight, max_concurrency=b.max_concurrency, enabled=b.enabled,
            draining=b.draining,
        )
        for b in Backend.objects.all()
        if _publishable(b)
    ]
    get_redis().set(contract.backends_key(), contract.encode_backends(items))
    return items


@transaction.atomic
def backends_seed_from_settings(*, actor: AbstractBaseUser | None = None) -> list[Backend]:
    """Create or update a Backend for each entry of ``INFERENCE_BACKENDS`` (idempotent). Raises ValueError,
    saving none, if one points at a link-local or metadata address (host names are looked up here)."""
    for item in settings.INFERENCE_BACKENDS:
        check_backend_url(item["url"], resolve=True)
    seeded = []
    for item in settings.INFERENCE_BACKENDS:
        backend, created = Backend.objects.update_or_create(
            name=item["name"],
            defaults={
                "base_url": item["url"],
                "api_key": item.get("api_key", ""),
                "served_models": item.get("models", []),
                "region": item.get("region", settings.INFERENCE_DEFAULT_REGION),
            },
        )
        if created:
            record(
                action="backend.create",
                actor=actor,
                target=backend,
                data={"name": backend.name, "url": backend.base_url, "region": backend.region},
            )
        seeded.append(backend)
    transaction.on_commit(backends_publish)
    return seeded


def _http(url: str, *, data: bytes | None = None, timeout: float = 2.0, api_key: str = "") -> tuple[int, bytes]:
    headers = {"content-type": "application/json"}
    if api_key:
        headers["authorization"] = f"Bearer {api_key}"
    request = urllib.request.Request(url, data=data, headers=headers)  # noqa: S310
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:  # noqa: S310 (configured URLs)
            return response.status, response.read()
    except urllib.error.HTTPError as exc:
        return exc.code, b""


def backends_probe() -> dict[str, bool]:
    """Probe each enabled backend's /health and /v1/models, for the consoles when no data-plane worker is
    recording what it sees (``BackendPool.publish_health``): a worker's record, the state requests are routed by,
    is never overwritten by this one."""
    results = {}
    pipe = get_redis().pipeline(transaction=False)
    for backend in Backend.objects.filter(enabled=True):
        health = {"source": "control plane", "checked_at": time.time(), "healthy": False, "models": [], "error": ""}
        try:
            status, _ = _http(f"{backend.base_url.rstrip('/')}/health")
            health["healthy"] = status == 200
            if status == 200:
                status, body = _http(f"{backend.base_url.rstrip('/')}/v1/models", api_key=backend.api_key)
                if status == 200:
                    health["models"] = [m["id"] for m in orjson.loads(body).get("data", [])]
            else:
                health["error"] = f"HTTP {status}"
        except (OSError, ValueError, KeyError) as exc:
            health["error"] = exc.__class__.__name__
        results[backend.name] = health["healthy"]
        pipe.set(contract.backend_health_key(backend.name), orjson.dumps(health), ex=300, nx=True)
    pipe.execute()
    return results


def backend_health(name: str) -> dict | None:
    raw = get_redis().get(contract.backend_health_key(name))
    return orjson.loads(raw) if raw else None


def models_prewarm(*, reason: str) -> list[str]:
    """Call the warm-up hook for each model to pre-warm (``INFERENCE_PREWARM_MODELS``, else every configured
    model). Returns the models the hook accepted."""
    url = settings.INFERENCE_WARMUP_URL
    if not url:
        return []
    models = list(settings.INFERENCE_PREWARM_MODELS)
    if not models:
        models = sorted({m for b in Backend.objects.filter(enabled=True) for m in (b.served_models or [])})
    accepted = []
    for model in models:
        try:
            status, _ = _http(url, data=orjson.dumps({"model": model, "reason": reason}), timeout=5)
        except OSError as exc:
            logger.warning("warm-up hook failed for %s: %s", model, exc.__class__.__name__)
            continue
        if status < 400:
            accepted.append(model)
        else:
            logger.warning("warm-up hook answered %s for %s", status, model)
    return accepted


BACKEND_FIELDS = ("base_url", "served_models", "region", "weight", "max_concurrency", "enabled", "draining")


@transaction.atomic
def backend_save(*, backend: Backend, actor: AbstractBaseUser | None = None, request: HttpRequest | None = None,
                 new_api_key: str | None = None) -> Backend:
    """Create or change a backend (staff). The API key is replaced only when a new one is given. Raises
    ValueError for a region outside Australia or a URL at a link-local or metadata address."""
    if backend.region not in settings.ALLOWED_DATA_REGIONS:
        raise ValueError(f"region {backend.region} is outside {settings.ALLOWED_DATA_REGIONS}")
    check_backend_url(backend.base_url, resolve=True)
    created = backend.pk is None
    if new_api_key:
        backend.api_key = new_api_key
    backend.save()
    record(
        action="backend.create" if created else "backend.update", actor=actor, target=backend, request=request,
        data={"name": backend.name, **{f: getattr(backend, f) for f in BACKEND_FIELDS},
              "api_key_changed": bool(new_api_key)},
    )
    transaction.on_commit(backends_publish)
    return backend


@transaction.atomic
def backend_set_state(*, backend: Backend, enabled: bool | None = None, draining: bool | None = None,
                      actor: AbstractBaseUser | None = None, request: HttpRequest | None = None) -> Backend:
    backend = Backend.objects.select_for_update().get(pk=backend.pk)
    before = {"enabled": backend.enabled, "draining": backend.draining}
    if enabled is not None:
        backend.enabled = enabled
    if draining is not None:
        backend.draining = draining
    backend.save(update_fields=["enabled", "draining", "updated_at"])
    record(action="backend.state", actor=actor, target=backend, request=request,
           data={"name": backend.name, "before": before, "after": {"enabled": backend.enabled,
                                                                 "draining": backend.draining}})
    transaction.on_commit(backends_publish)
    return backend


@transaction.atomic
def backend_delete(*, backend: Backend, actor: AbstractBaseUser | None = None,
                   request: HttpRequest | None = None) -> None:
    record(action="backend.delete", actor=actor, target=backend, request=request,
           data={"name": backend.name, "url": backend.base_url})
    backend.delete()
    transaction.on_commit(backends_publish)
