"""Stripe's request encoding: ``application/x-www-form-urlencoded`` with bracketed keys, as the SDK sends it.

``a[b][0][c]=x&a[b][1][c]=y&expand[]=tiers`` decodes to ``{"a": {"b": [{"c": "x"}, {"c": "y"}]},
"expand": ["tiers"]}``. Every leaf stays a string, as on the wire; a mapping whose keys are all indexes becomes a list.
"""

from __future__ import annotations

import re
from typing import Any
from urllib.parse import parse_qsl

_PART = re.compile(r"\[([^\[\]]*)\]")


class FormError(ValueError):
    """A key that cannot be nested (``a=1&a[b]=2``)."""


def _split(key: str) -> list[str]:
    head, _, rest = key.partition("[")
    if not rest:
        return [head]
    rest = "[" + rest
    parts = _PART.findall(rest)
    if "".join(f"[{p}]" for p in parts) != rest:
        raise FormError(f"malformed key {key!r}")
    return [head, *parts]


def _listify(node: Any) -> Any:
    if not isinstance(node, dict):
        return node
    converted = {k: _listify(v) for k, v in node.items()}
    if converted and all(k.isdigit() for k in converted):
        return [converted[k] for k in sorted(converted, key=int)]
    return converted


def decode(body: str) -> dict[str, Any]:
    """The nested parameters of a form body or query string."""
    root: dict[str, Any] = {}
    for key, value in parse_qsl(body, keep_blank_values=True):
        parts = _split(key)
        node = root
        for i, part in enumerate(parts):
            last = i == len(parts) - 1
            if part == "":  # "expand[]=x": append
                raise FormError(f"empty brackets only at the end of {key!r}")
            nxt = parts[i + 1] if not last else None
            if last:
                if isinstance(node.get(part), dict):
                    raise FormError(f"{key!r} is both a value and an object")
                node[part] = value
            elif nxt == "" and i + 1 == len(parts) - 1:
                existing = node.setdefault(part, {})
                if not isinstance(existing, dict):
                    raise FormError(f"{key!r} is both a value and a list")
                existing[str(len(existing))] = value
                break
            else:
                child = node.setdefault(part, {})
                if not isinstance(child, dict):
                    raise FormError(f"{key!r} is both a value and an object")
                node = child
    return _listify(root)


def as_bool(value: Any, default: bool = False) -> bool:
    if value is None or value == "":
        return default
    if isinstance(value, bool):
        return value
    return str(value).lower() == "true"
