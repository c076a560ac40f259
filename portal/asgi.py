"""ASGI entry point: `/v1/*` goes to the lean data-plane app, WebSockets to Channels, the rest to Django.

Run with uvicorn: ``uvicorn portal.asgi:application --workers N --loop uvloop --http httptools
--no-proxy-headers`` (the client address behind proxies is TRUSTED_PROXIES' to decide, core/proxies.py).
"""

from __future__ import annotations

import os

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "portal.settings")

from django.core.asgi import get_asgi_application

django_app = get_asgi_application()  # sets Django up before anything imports models

from portal.lifespan import Lifespan  # noqa: E402
from portal.routing import build_application  # noqa: E402

application = build_application(django_app, Lifespan())
