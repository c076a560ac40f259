"""Reads of the inference control plane."""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

import orjson
from django.conf import settings
from redis.exceptions import RedisError

from core import contract
from core.redis import get_redis
from inference.models import Backend

logger = logging.getLogger("wattle.inference")


@dataclass
class ServedModel:
    name: str
    regions: set[str] = field(default_factory=set)  # of the enabled backends serving it
    context_length: int = 0  # the largest a probe found; the data plane's default where none did


def served_models() -> dict[str, ServedModel]:
    """The models the enabled backends serve, by name: what each backend declares, or else what the data plane's
    last probe found (the record ``BackendPool.publish_health`` writes, the one the staff backends page shows),
    with the regions serving each and its context length as /v1/models reports it. The data plane's pool is the
    authority on what a request may name right now; this is for the pages and forms that list models before
    they can ask it: the playground, a key's allowed models, a price's model, the model catalogue. With Redis
    away, the declared models alone (at the default context length)."""
    backends = list(Backend.objects.filter(enabled=True).only("name", "served_models", "region"))
    records: list = []
    if backends:
        try:
            records = get_redis().mget([contract.backend_health_key(b.name) for b in backends])
        except RedisError as exc:
            logger.warning("backend health unavailable: %s", exc.__class__.__name__)
            records = [None] * len(backends)
    found: dict[str, ServedModel] = {}
    for backend, raw in zip(backends, records, strict=True):
        health = orjson.loads(raw) if raw else {}
        names = backend.served_models or health.get("models") or ()
        lengths = health.get("max_model_len") or {}
        for name in names:
            if not isinstance(name, str):
                continue
            model = found.setdefault(name, ServedModel(name))
            model.regions.add(backend.region)
            length = lengths.get(name)
            if isinstance(length, int):
                model.context_length = max(model.context_length, length)
    for model in found.values():
        model.context_length = model.context_length or settings.INFERENCE_DEFAULT_MAX_MODEL_LEN
    return dict(sorted(found.items()))


def declared_models() -> list[str]:
    """The names of ``served_models``, sorted."""
    return list(served_models())
