"""Reads of the inference control plane."""

from __future__ import annotations

from inference.models import Backend
from inference.services import backend_health


def declared_models() -> list[str]:
    """The models the enabled backends serve, as the control plane knows them: what each declares, or else what
    its last probe found. The data plane's pool is the authority on what a request may name right now; this is
    for pages that list models before they can ask it (the playground's form)."""
    models: set[str] = set()
    for backend in Backend.objects.filter(enabled=True):
        served = backend.served_models or (backend_health(backend.name) or {}).get("models") or []
        models.update(m for m in served if isinstance(m, str))
    return sorted(models)
