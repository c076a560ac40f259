"""Typed helpers that read settings from the environment and fail loudly on bad values.

Every secret can also be given as ``NAME_FILE`` pointing at a file (Kubernetes and Docker secrets), so
secrets never have to sit in the process environment.
"""

from __future__ import annotations

import os
from pathlib import Path


class ImproperlyConfigured(ValueError):
    """A setting read from the environment has a value we can't use (named for Django's, which it stands for
    outside Django)."""

_TRUE = {"1", "true", "yes", "on"}
_FALSE = {"0", "false", "no", "off", ""}


def env_str(name: str, default: str | None = None) -> str | None:
    """A plain string, or the contents of the file named by ``NAME_FILE`` when that is set."""
    file_path = os.environ.get(f"{name}_FILE")
    if file_path:
        try:
            return Path(file_path).read_text().strip()
        except OSError as exc:
            raise ImproperlyConfigured(f"{name}_FILE={file_path!r} cannot be read: {exc}") from exc
    return os.environ.get(name, default)


def env_bool(name: str, default: bool = False) -> bool:
    raw = os.environ.get(name)
    if raw is None:
        return default
    value = raw.strip().lower()
    if value in _TRUE:
        return True
    if value in _FALSE:
        return False
    raise ImproperlyConfigured(f"{name}={raw!r} is not a boolean (use true/false)")


def env_int(name: str, default: int) -> int:
    raw = os.environ.get(name)
    if raw is None or raw.strip() == "":
        return default
    try:
        return int(raw)
    except ValueError as exc:
        raise ImproperlyConfigured(f"{name}={raw!r} is not an integer") from exc


def env_float(name: str, default: float) -> float:
    raw = os.environ.get(name)
    if raw is None or raw.strip() == "":
        return default
    try:
        return float(raw)
    except ValueError as exc:
        raise ImproperlyConfigured(f"{name}={raw!r} is not a number") from exc


def env_list(name: str, default: list[str] | None = None) -> list[str]:
    raw = os.environ.get(name)
    if raw is None:
        return list(default or [])
    return [item.strip() for item in raw.split(",") if item.strip()]


def env_name(name: str, *formerly: str) -> str:
    """``name``, or the first of the names it replaced that is set in the environment (a renamed setting keeps
    working under its old name; the new one wins when both are set)."""
    if name in os.environ or f"{name}_FILE" in os.environ:
        return name
    return next((old for old in formerly if old in os.environ or f"{old}_FILE" in os.environ), name)
