from __future__ import annotations

from django.conf import settings
from django.db import models
from django.utils import timezone


def _default_region() -> str:
    return settings.INFERENCE_DEFAULT_REGION


class Backend(models.Model):
    """A vLLM replica (or a pool behind one URL). Health is runtime state and lives in Redis."""

    name = models.SlugField(max_length=100, unique=True)
    base_url = models.URLField(max_length=300, help_text="Without /v1, e.g. http://vllm-7b.internal:8000")
    api_key = models.CharField(max_length=200, blank=True, help_text="vLLM --api-key, if the replica has one.")
    served_models = models.JSONField(default=list, blank=True, help_text="Empty: discovered from /v1/models.")
    region = models.CharField(max_length=32, default=_default_region)
    weight = models.PositiveSmallIntegerField(default=100)
    max_concurrency = models.PositiveIntegerField(default=256)
    enabled = models.BooleanField(default=True)
    draining = models.BooleanField(default=False)
    created_at = models.DateTimeField(default=timezone.now)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        ordering = ["name"]

    def __str__(self) -> str:
        return self.name
