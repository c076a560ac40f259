from __future__ import annotations

import asyncio
import time
from datetime import date

import aiohttp
from asgiref.sync import sync_to_async
from django.conf import settings
from django.contrib.auth.decorators import login_required
from django.db import connection
from django.http import HttpResponse, JsonResponse
from django.shortcuts import redirect, render
from django.views.decorators.cache import never_cache
from django.views.decorators.http import require_GET

from core.privacy import AUDIT_METADATA_YEARS, PRIVACY_POLICY_VERSIONS, SUBPROCESSORS, region_label
from core.redis import new_async_redis
from inference.gateway.metrics import internal_callers
from inference.models import Backend

_FAVICON: bytes | None = None


@require_GET
def favicon(request):
    """``/favicon.ico``: browsers and crawlers ask for it at the root whatever the page links, so it is served
    here (read once; the file ships with the code in static/) rather than answered with a 404."""
    global _FAVICON
    if _FAVICON is None:
        from django.contrib.staticfiles import finders

        with open(finders.find("favicon.ico"), "rb") as icon:
            _FAVICON = icon.read()
    response = HttpResponse(_FAVICON, content_type="image/x-icon")
    response["Cache-Control"] = "public, max-age=86400"
    return response


@never_cache
@require_GET
def healthz(request):
    """Liveness: the process answers. Nothing else is checked here, on purpose."""
    return JsonResponse({"status": "ok"})


def _check_database() -> None:
    with connection.cursor() as cursor:
        cursor.execute("SELECT 1")


async def _check_redis() -> None:
    client = new_async_redis()
    try:
        await asyncio.wait_for(client.ping(), 2)
    finally:
        await client.aclose()


async def _probe_backends() -> dict[str, bool]:
    backends = await sync_to_async(list)(Backend.objects.filter(enabled=True).values_list("name", "base_url"))
    timeout = aiohttp.ClientTimeout(total=2)
    async with aiohttp.ClientSession(timeout=timeout) as session:

        async def probe(url: str) -> bool:
            try:
                async with session.get(url.rstrip("/") + "/health") as response:
                    return response.status == 200
            except (aiohttp.ClientError, TimeoutError):
                return False

        results = await asyncio.gather(*(probe(url) for _name, url in backends))
    return {name: ok for (name, _url), ok in zip(backends, results, strict=True)}


async def _readiness() -> tuple[bool, dict]:
    started = time.perf_counter()
    checks: dict[str, object] = {}
    try:
        await sync_to_async(_check_database)()
        checks["database"] = "ok"
    except Exception as exc:
        checks["database"] = f"error: {exc.__class__.__name__}"
    try:
        await _check_redis()
        checks["redis"] = "ok"
    except Exception as exc:
        checks["redis"] = f"error: {exc.__class__.__name__}"
    try:
        backends = await _probe_backends()
    except Exception as exc:
        backends = {}
        checks["backends_error"] = exc.__class__.__name__
    checks["backends"] = {name: "ok" if ok else "unhealthy" for name, ok in backends.items()}
    ready = checks["database"] == "ok" and checks["redis"] == "ok" and any(backends.values())
    return ready, {"checks": checks, "took_ms": round((time.perf_counter() - started) * 1000, 1)}


class ReadinessCache:
    """The last readiness result, kept ``READYZ_CACHE_S``: probes and load balancers call /readyz often, and
    each check queries the database and Redis and probes every backend. Callers that come while a check runs
    wait for that one (per event loop, i.e. per worker) instead of starting their own."""

    def __init__(self, ttl_s: float) -> None:
        self.ttl_s = ttl_s
        self._result: tuple[bool, dict] | None = None
        self._checked_at = 0.0
        self._task: asyncio.Task | None = None

    def clear(self) -> None:
        self._result, self._task = None, None

    async def current(self) -> tuple[bool, dict, float]:
        """(ready, details, age in seconds)."""
        if self._result is not None and time.monotonic() - self._checked_at < self.ttl_s:
            return (*self._result, time.monotonic() - self._checked_at)
        loop = asyncio.get_running_loop()
        task = self._task
        if task is None or task.done() or task.get_loop() is not loop:
            task = self._task = loop.create_task(self._check())
        ready, details = await asyncio.shield(task)
        return ready, details, time.monotonic() - self._checked_at

    async def _check(self) -> tuple[bool, dict]:
        result = await _readiness()
        self._result, self._checked_at = result, time.monotonic()
        return result


READYZ_CACHE_S = 1.0
readiness = ReadinessCache(READYZ_CACHE_S)


def _internal_caller(request) -> bool:
    """The rule of /metrics (inference.gateway.metrics.internal_callers), from the connection's own peer."""
    meta = request.META
    return internal_callers().allowed(
        peer=meta.get("WATTLE_PEER_ADDR", meta.get("REMOTE_ADDR")),
        forwarded_for=meta.get("HTTP_X_FORWARDED_FOR"),
        forwarded="HTTP_FORWARDED" in meta,
        authorization=meta.get("HTTP_AUTHORIZATION", "").encode("utf-8", "replace"),
    )


@never_cache
@require_GET
async def readyz(request):
    """Readiness: the database, Redis and at least one inference backend answer. Internal callers (as for
    /metrics: an internal network or METRICS_TOKEN) are told which; everyone else gets the verdict only."""
    ready, details, age_s = await readiness.current()
    status = 200 if ready else 503
    if not _internal_caller(request):
        return JsonResponse({"status": "ok" if ready else "unavailable"}, status=status)
    return JsonResponse(
        {"status": "ready" if ready else "not ready", **details, "age_ms": round(age_s * 1000, 1)}, status=status
    )


def home(request):
    if request.user.is_authenticated:
        return redirect("dashboard")
    return render(request, "portal/home.html")


def privacy_policy(request):
    context = {
        "versions": PRIVACY_POLICY_VERSIONS,
        "effective": date.fromisoformat(settings.PRIVACY_POLICY_VERSION),
        "subprocessors": SUBPROCESSORS,
        "storage_region": region_label(settings.AWS_REGION),
        "audit_metadata_years": AUDIT_METADATA_YEARS,
    }
    return render(request, "portal/privacy.html", context)


def terms(request):
    return render(request, "portal/terms.html")


@login_required
def dashboard(request):
    """Where sign-in lands: the tenant last used (or the first), its onboarding while it has no key yet."""
    from django.http import Http404

    from tenants.access import resolve_tenant
    from tenants.models import ApiKey

    try:
        access = resolve_tenant(request)
    except Http404:
        return render(request, "portal/dashboard.html", {})
    if not ApiKey.objects.filter(tenant=access.tenant).exists() and access.can("keys.create"):
        return redirect("tenant_onboarding", access.tenant.slug)
    return redirect("tenant_home", access.tenant.slug)
