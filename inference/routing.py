"""WebSocket routes served by Channels (the playground consumer lives in inference.consumers)."""

from __future__ import annotations

websocket_urlpatterns: list = []
