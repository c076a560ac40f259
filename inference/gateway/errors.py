"""OpenAI-shaped errors: every failure on `/v1` answers with this body and the matching status."""

from __future__ import annotations

import orjson

# An error echoes client strings (a model name, a field name, a value) only as a bounded prefix, and no message
# or param is ever longer than these: what a client sends must not grow what we answer, log or store.
EXCERPT_CHARS = 64
_MAX_MESSAGE_CHARS = 2_000
_MAX_PARAM_CHARS = 128


def excerpt(value: object, limit: int = EXCERPT_CHARS) -> str:
    """At most ``limit`` characters of a client-supplied value, for an error message."""
    text = value if isinstance(value, str) else repr(value)
    return text if len(text) <= limit else text[:limit] + "…"


class GatewayError(Exception):
    """An error the client should see. ``type`` and ``code`` follow OpenAI's vocabulary."""

    def __init__(
        self,
        status: int,
        message: str,
        *,
        type: str = "invalid_request_error",
        code: str | None = None,
        param: str | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        message = excerpt(message, _MAX_MESSAGE_CHARS)
        super().__init__(message)
        self.status = status
        self.message = message
        self.type = type
        self.code = code
        self.param = excerpt(param, _MAX_PARAM_CHARS) if param is not None else None
        self.headers = headers or {}

    def body(self) -> bytes:
        return orjson.dumps(
            {"error": {"message": self.message, "type": self.type, "param": self.param, "code": self.code}}
        )


def missing_key() -> GatewayError:
    return GatewayError(
        401,
        "You didn't provide an API key. You need to provide your API key in an Authorization header using "
        "Bearer auth (i.e. Authorization: Bearer YOUR_KEY).",
    )


def invalid_key(presented: str) -> GatewayError:
    # Echo only a masked fragment: enough to tell keys apart, never enough to use one.
    shown = f"{presented[:8]}...{presented[-4:]}" if len(presented) > 16 else "***"
    return GatewayError(401, f"Incorrect API key provided: {shown}.", code="invalid_api_key")


def bad_request(message: str, *, param: str | None = None, code: str | None = None) -> GatewayError:
    return GatewayError(400, message, param=param, code=code)


def model_not_found(model: str) -> GatewayError:
    return GatewayError(
        404,
        f"The model `{excerpt(model)}` does not exist or you do not have access to it.",
        param="model",
        code="model_not_found",
    )


def no_capacity(model: str, retry_after: int) -> GatewayError:
    return GatewayError(
        503,
        f"No replica of `{model}` can take this request right now. Please retry after {retry_after} seconds.",
        type="server_error",
        code="service_unavailable",
        headers={"retry-after": str(retry_after)},
    )


def upstream_timeout() -> GatewayError:
    return GatewayError(504, "The model backend did not answer in time.", type="server_error", code="timeout")


def internal_error() -> GatewayError:
    return GatewayError(500, "The server had an error while processing your request.", type="server_error")
