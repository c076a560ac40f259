"""Control-plane changes to the backend pool. The data plane reads the published list from Redis."""

from __future__ import annotations

import orjson
from django.conf import settings
from django.db import transaction

from audit.services import record
from inference.gateway.backends import BACKENDS_KEY
from inference.models import Backend
from portal.redis import get_redis, key


def backends_publish() -> list[dict]:
    """Write the enabled backends to Redis for every data-plane worker."""
    items = [
        {
            "name": b.name,
            "url": b.base_url.rstrip("/"),
            "api_key": b.api_key,
            "models": list(b.served_models or []),
            "region": b.region,
            "weight": b.weight,
            "max_concurrency": b.max_concurrency,
            "enabled": b.enabled,
            "draining": b.draining,
        }
        for b in Backend.objects.all()
    ]
    get_redis().set(key(BACKENDS_KEY), orjson.dumps(items))
    return items


@transaction.atomic
def backends_seed_from_settings(*, actor=None) -> list[Backend]:
    """Create or update a Backend for each entry of ``INFERENCE_BACKENDS`` (idempotent)."""
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
