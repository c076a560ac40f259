"""WebSocket routes served by Channels (mounted behind the origin check and session authentication in
``portal.routing``)."""

from __future__ import annotations

from django.urls import path

from inference.consumers import PlaygroundConsumer

websocket_urlpatterns = [
    path("ws/t/<slug:slug>/playground/", PlaygroundConsumer.as_asgi()),
]
