"""Log filters: request ids in every log line (a context variable set by the middleware), and no request bodies
(COMPLIANCE R-REG-3: nothing with end-customer content goes to logs)."""

from __future__ import annotations

import contextvars
import logging

current_request_id: contextvars.ContextVar[str | None] = contextvars.ContextVar("request_id", default=None)

# Attributes a record may carry that hold what a client sent. Django's request loggers (`django.request`,
# `django.server`) attach the request object, whose body and POST data are one attribute away from any formatter
# or error tracker that serialises extras; code may pass a body as `extra`. Each is replaced by what is safe to
# keep: the method and path of a request, the size of a body.
_BODY_ATTRIBUTES = ("body", "request_body", "payload", "data")


class RequestIdFilter(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        if not getattr(record, "request_id", None):
            record.request_id = current_request_id.get()
        return True


class DropRequestBodies(logging.Filter):
    """Keep a record, without any request body it carries (R-REG-3)."""

    def filter(self, record: logging.LogRecord) -> bool:
        attributes = record.__dict__
        request = attributes.get("request")
        if request is not None and not isinstance(request, str):
            method = str(getattr(request, "method", "") or "")[:16]
            path = str(getattr(request, "path", "") or "")[:256]
            record.request = f"{method} {path}".strip()
        for name in _BODY_ATTRIBUTES:
            if name in attributes:
                value = attributes[name]
                size = len(value) if isinstance(value, (bytes, bytearray, str)) else None
                setattr(record, name, f"<dropped: {size} characters>" if size is not None else "<dropped>")
        return True
