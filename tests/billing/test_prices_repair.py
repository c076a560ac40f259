"""Model prices reach the data plane again after Redis lost them or a publish failed: without them the
gateway prices usage at zero and no spend cap holds."""

from __future__ import annotations

import threading
from decimal import Decimal

import pytest

from billing import services
from core import contract
from core.redis import get_redis

MODEL = "mistralai/Mistral-7B-Instruct-v0.3"

pytestmark = pytest.mark.django_db(transaction=True)


def _published():
    raw = get_redis().get(contract.prices_key())
    return None if raw is None else {model: list(pair) for model, pair in contract.decode_prices(raw).items()}


def test_prices_redis_lost_are_republished_by_the_repair_jobs(settings, django_capture_on_commit_callbacks):
    with django_capture_on_commit_callbacks(execute=True):
        services.model_price_set(model=MODEL, input_per_1k_aud=Decimal("0.50"), output_per_1k_aud=Decimal("1.50"))
    assert _published() == {MODEL: [500.0, 1500.0]}
    get_redis().delete(contract.prices_key())  # as after a Redis restart without persistence

    from portal.lifespan import redis_repair_loop

    stop = threading.Event()
    stop.set()  # one round of the jobs
    loop = threading.Thread(target=redis_repair_loop, kwargs={"stop": stop, "interval": 0.01})
    loop.start()
    loop.join(timeout=30)
    assert _published() == {MODEL: [500.0, 1500.0]}
    assert any(e["task"] == "billing.tasks.publish_prices" and e["schedule"] <= 10
               for e in settings.CELERY_BEAT_SCHEDULE.values())

