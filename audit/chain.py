"""The audit chain's canonical encoding and hash (docs/audit.md, "Canonical encoding").

An entry is hashed as ``sha256(prev_hash || canonical)`` where ``prev_hash`` is the previous entry's hash as 64
lowercase hex ASCII characters (``GENESIS`` for the first entry) and ``canonical`` is the entry's fields in
``FIELDS`` as a JSON object: keys sorted, no whitespace, ASCII only (``\\uXXXX`` escapes), times as UTC ISO-8601
with microseconds and a ``Z``. The field list is fixed here, once: the sealer, the migration that chained the
rows written before the chain existed, ``verify_audit`` and the archive all use these functions, so they cannot
disagree about what was hashed.
"""

from __future__ import annotations

import hashlib
import json
from datetime import UTC, datetime
from typing import Any

GENESIS = "0" * 64

# The columns that are hashed, in the order the fast readers select them. ``hash`` and ``prev_hash`` are not part
# of the entry they protect; ``seq`` is, so that moving an entry to another place in the chain breaks it.
FIELDS = (
    "seq", "id", "created_at", "action", "actor_kind", "actor_id", "actor_label", "api_key_id", "tenant_id",
    "target_type", "target_id", "ip", "user_agent", "request_id", "data",
)

_encode = json.JSONEncoder(sort_keys=True, separators=(",", ":"), ensure_ascii=True, allow_nan=False).encode


def utc_iso(value: datetime | str) -> str:
    """A time as ``YYYY-MM-DDTHH:MM:SS.ffffffZ``. SQLite hands back Django's stored text (naive UTC, and no
    fraction when it is zero); PostgreSQL an aware datetime."""
    if isinstance(value, str):
        if value.endswith("Z"):  # already canonical (a line read back from an archived segment)
            return value
        text = value.replace(" ", "T")
        if text.endswith("+00:00"):
            text = text[:-6]
        if "." not in text:
            text += ".000000"
        return text + "Z"
    if value.tzinfo is not None:
        value = value.astimezone(UTC)
    return value.strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def canonical(row: dict[str, Any]) -> bytes:
    """The canonical bytes of an entry given its ``FIELDS`` (``created_at`` a datetime or SQLite's text, ``data`` a
    dict or its JSON text)."""
    data = row["data"]
    doc = {name: row[name] for name in FIELDS}
    doc["created_at"] = utc_iso(row["created_at"])
    doc["data"] = json.loads(data) if isinstance(data, str) else data
    if doc["ip"] is not None:
        doc["ip"] = str(doc["ip"])  # psycopg reads inet as an address object
    return _encode(doc).encode("ascii")


def link(prev_hash: str, row: dict[str, Any]) -> str:
    return hashlib.sha256(prev_hash.encode("ascii") + canonical(row)).hexdigest()


def link_values(prev_hash: str, values: tuple) -> str:
    """``link`` for a row selected as ``FIELDS`` in order (the fast path of the sealer and ``verify_audit``)."""
    return link(prev_hash, dict(zip(FIELDS, values, strict=True)))
