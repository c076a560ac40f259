"""vLLM 0.33.0 error bodies (protocol reference §3).

Normal errors are ``{"error": {"message", "type", "param", "code"}}`` with the integer HTTP status as
``code``; the auth middleware's 401 is the bare ``{"error": "Unauthorized"}``; an error in the middle
of a stream is a ``json.dumps`` (spaced) data frame.
"""

from __future__ import annotations

import json
import re
from http import HTTPStatus
from typing import Any

import orjson
from aiohttp import web

UNAUTHORIZED_BODY = b'{"error":"Unauthorized"}'
ENGINE_DEAD_MESSAGE = "EngineCore encountered an issue. See stack trace (above) for the root cause."
INTERNAL_ERROR_MESSAGE = "Internal server error"
STARTING_MESSAGE = "The engine is still starting up. Please try again later."


class VLLMValidationError(ValueError):
    """Raised by request validators; the class name shows up in pydantic's error context, as in vLLM."""

    def __init__(self, message: str, *, parameter: str | None = None) -> None:
        super().__init__(message)
        self.parameter = parameter


class ApiError(Exception):
    """An error answered before any response byte was sent."""

    def __init__(self, message: str, *, err_type: str, status: int, param: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.err_type = err_type
        self.status = status
        self.param = param

    @classmethod
    def bad_request(cls, message: str, param: str | None = None) -> ApiError:
        return cls(message, err_type="BadRequestError", status=400, param=param)

    @classmethod
    def http(cls, status: int, message: str | None = None) -> ApiError:
        """Starlette ``HTTPException``: ``type`` is the status phrase (e.g. "Not Found")."""
        phrase = HTTPStatus(status).phrase
        return cls(message or phrase, err_type=phrase, status=status)

    @classmethod
    def model_not_found(cls, model: str, valid: list[str]) -> ApiError:
        return cls(
            f"The model `{model}` does not exist. Valid aliases: {', '.join(valid)}.",
            err_type="NotFoundError",
            status=404,
            param="model",
        )

    @classmethod
    def internal(cls, message: str = INTERNAL_ERROR_MESSAGE) -> ApiError:
        return cls(message, err_type="InternalServerError", status=500)

    @classmethod
    def service_unavailable(cls, message: str = STARTING_MESSAGE) -> ApiError:
        return cls(message, err_type="ServiceUnavailableError", status=503)

    def body(self) -> bytes:
        return error_body(self.message, self.err_type, self.status, self.param)

    def response(self) -> web.Response:
        return web.Response(body=self.body(), status=self.status, content_type="application/json")


def error_body(message: str, err_type: str, code: int, param: str | None = None) -> bytes:
    return orjson.dumps(
        {"error": {"message": sanitize_message(message), "type": err_type, "param": param, "code": code}}
    )


def streaming_error_frame(message: str = INTERNAL_ERROR_MESSAGE, err_type: str = "InternalServerError") -> bytes:
    # vLLM builds this frame with json.dumps, so unlike every other chunk it has spaces after : and ,
    payload = {"error": {"message": message, "type": err_type, "param": None, "code": 500}}
    return b"data: " + json.dumps(payload).encode() + b"\n\n"


_ADDRESS = re.compile(r" at 0x[0-9a-f]+>")
_TRACEBACK = re.compile(r'\n?\s*File "[^"]+", line \d+, in \S+(\n\s+.*)?')
_SYSTEM_PATH = re.compile(r"/(?:home|usr|opt|var|tmp|root|lib|mnt|srv)(?:/[\w.\-]+)+")
_FILE_PATH = re.compile(r"(?:/[\w\-]+)+/[\w\-]+\.\w+")


def sanitize_message(message: str) -> str:
    """vLLM's ``sanitize_message``: strip addresses, tracebacks and file paths from error text."""
    if "/" not in message and "0x" not in message and "File" not in message:
        return message.strip()
    message = _ADDRESS.sub(">", message)
    message = _TRACEBACK.sub("", message)
    message = _SYSTEM_PATH.sub("<path>", message)
    message = _FILE_PATH.sub("<path>", message)
    return message.strip()


# --- pydantic RequestValidationError rendering (vllm .../handlers/validation.py) -------------------

_BRACKETED = re.compile(r"[\[\]{}()]")
_INTERNAL_LOC_MARKERS = frozenset(
    {
        "function-wrap", "function-after", "function-before", "function-plain", "json-or-python",
        "lax-or-strict", "chain", "default", "nullable", "tagged-union", "union", "call", "arguments",
        "is-instance", "is-subclass", "callable", "str", "int", "float", "bool", "bytes", "bytearray",
        "list", "tuple", "dict", "set", "frozenset", "complex", "none", "nonetype",
    }
)  # fmt: skip
_MAX_REPORTED_ERRORS = 10
_MAX_ERROR_INPUT_CHARS = 200
_MAX_ERROR_CHARS = 1000


def _is_internal_loc_segment(segment: str) -> bool:
    return bool(_BRACKETED.search(segment)) or segment.lower() in _INTERNAL_LOC_MARKERS


def clean_loc_for_param(loc: tuple[Any, ...]) -> str:
    parts = [str(p) for p in loc if not _is_internal_loc_segment(str(p))]
    return ".".join(parts) if parts else ".".join(str(p) for p in loc)


def _summarize_error_input(value: object) -> object:
    if isinstance(value, str):
        return value[:_MAX_ERROR_INPUT_CHARS] + "...[truncated]" if len(value) > _MAX_ERROR_INPUT_CHARS else value
    if isinstance(value, bytes | bytearray):
        return f"<{type(value).__name__} of {len(value)} bytes>"
    if isinstance(value, list | tuple | set | frozenset | dict):
        return f"<{type(value).__name__} of {len(value)} items>"
    text = str(value)
    return text[:_MAX_ERROR_INPUT_CHARS] + "...[truncated]" if len(text) > _MAX_ERROR_INPUT_CHARS else text


def _format_error(err: dict[str, Any]) -> str:
    err = dict(err)
    if "input" in err:
        err["input"] = _summarize_error_input(err["input"])
    loc = err.get("loc")
    if isinstance(loc, tuple | list):
        err["loc"] = clean_loc_for_param(tuple(loc))
    text = str(err)
    return text[:_MAX_ERROR_CHARS] + "...[truncated]" if len(text) > _MAX_ERROR_CHARS else text


def request_validation_error(errors: list[dict[str, Any]]) -> ApiError:
    """FastAPI's RequestValidationError as vLLM renders it: 400, type "Bad Request".

    ``errors`` are pydantic errors with FastAPI's ``("body", ...)`` location prefix and no ``url``.
    """
    param = None
    for error in errors:
        ctx_error = error.get("ctx", {}).get("error")
        if isinstance(ctx_error, VLLMValidationError):
            param = ctx_error.parameter
            break
    if param is None and errors and errors[0].get("loc"):
        param = clean_loc_for_param(tuple(errors[0]["loc"]))
    if errors:
        count = len(errors)
        label = "error" if count == 1 else "errors"
        reported = errors[:_MAX_REPORTED_ERRORS]
        message = f"{count} validation {label}:\n" + "".join(f"  {_format_error(e)}\n" for e in reported)
        if count > len(reported):
            message += f"  ...and {count - len(reported)} more {label}\n"
        message = message.rstrip()
    else:
        message = "Validation error"
    return ApiError(message, err_type=HTTPStatus.BAD_REQUEST.phrase, status=400, param=param)


def json_decode_error(body: bytes) -> ApiError:
    """FastAPI's answer to malformed JSON: a ``json_invalid`` validation error at the byte position."""
    try:
        json.loads(body)
    except json.JSONDecodeError as exc:
        position, reason = exc.pos, exc.msg
    except (UnicodeDecodeError, ValueError) as exc:
        position, reason = 0, str(exc)
    else:  # orjson refused something json accepts (e.g. NaN): report it the same way
        position, reason = 0, "Expecting value"
    return request_validation_error(
        [{"type": "json_invalid", "loc": ("body", position), "msg": "JSON decode error", "input": {},
          "ctx": {"error": reason}}]
    )  # fmt: skip
