"""Reads of the inference control plane."""

from __future__ import annotations

import logging

import orjson
from redis.exceptions import RedisError

from core import contract
from core.redis import get_redis
from inference.models import Backend

logger = logging.getLogger("wattle.inference")


def declared_models() -> list[str]:
    """The models the enabled backends serve: what each declares, or else what the data plane's last probe found
    (the record ``BackendPool.publish_health`` writes, the one the staff backends page shows). The data plane's
    pool is the authority on what a request may name right now; this is for the pages and forms that list
    models before they can ask it: the playground, a key's allowed models, a price's model, the model catalogue.
    With Redis away, the declared models alone."""
    backends = list(Backend.objects.filter(enabled=True).only("name", "served_models"))
    models: set[str] = set()
    probed = [b.name for b in backends if not b.served_models]
    found: list = []
    if probed:
        try:
            found = get_redis().mget([contract.backend_health_key(name) for name in probed])
        except RedisError as exc:
            logger.warning("backend health unavailable: %s", exc.__class__.__name__)
    for backend in backends:
        models.update(m for m in backend.served_models or () if isinstance(m, str))
    for raw in found:
        if raw:
            models.update(m for m in orjson.loads(raw).get("models") or () if isinstance(m, str))
    return sorted(models)


def context_lengths() -> dict[str, int]:
    """Each served model's context length (tokens), as the data plane's probes last found it; absent where no
    probe has reported one."""
    names = list(Backend.objects.filter(enabled=True).values_list("name", flat=True))
    lengths: dict[str, int] = {}
    if not names:
        return lengths
    try:
        found = get_redis().mget([contract.backend_health_key(name) for name in names])
    except RedisError as exc:
        logger.warning("backend health unavailable: %s", exc.__class__.__name__)
        return lengths
    for raw in found:
        for model, length in ((orjson.loads(raw) if raw else {}).get("max_model_len") or {}).items():
            if isinstance(length, int):
                lengths[model] = max(length, lengths.get(model, 0))
    return lengths
