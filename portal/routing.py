"""Protocol and path routing for the one ASGI application."""

from __future__ import annotations

from channels.auth import AuthMiddlewareStack
from channels.routing import URLRouter
from channels.security.websocket import AllowedHostsOriginValidator

from inference.gateway.app import gateway
from inference.routing import websocket_urlpatterns


def build_application(django_app, lifespan):
    websocket_app = AllowedHostsOriginValidator(AuthMiddlewareStack(URLRouter(websocket_urlpatterns)))

    async def application(scope, receive, send):
        kind = scope["type"]
        if kind == "http":
            # The data plane skips Django entirely: no middleware stack, no ORM on the request path.
            path = scope["path"]
            if path.startswith("/v1/") or path == "/v1":
                await gateway(scope, receive, send)
            elif path == "/metrics":
                await gateway.metrics_endpoint(scope, receive, send)
            else:
                await django_app(scope, receive, send)
        elif kind == "websocket":
            await websocket_app(scope, receive, send)
        elif kind == "lifespan":
            await lifespan(scope, receive, send)
        else:
            raise ValueError(f"unsupported ASGI scope type {kind!r}")

    return application
