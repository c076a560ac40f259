"""The audit chain's canonical encoding and hash (docs/audit.md, "Canonical encoding").

An entry is hashed as ``sha256(prev_hash || canonical)`` where ``prev_hash`` is the previous entry's hash as 64
lowercase hex ASCII characters (``GENESIS`` for the first entry) and ``canonical`` is the entry's fields in
``FIELDS`` as a JSON object: keys sorted, no whitespace, ASCII only (``\\uXXXX`` escapes), times as UTC ISO-8601
with microseconds and a ``Z``, the tenant's UUID as lowercase dashed text. The field list is fixed here, once:
the sealer, the migration that chained the rows written before the chain existed, ``verify_audit`` and the
archive all use these functions, so they cannot disagree about what was hashed.
"""

from __future__ import annotations

import hashlib
import json
import uuid
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
    fraction when it is zero); PostgreSQL an aware datetime, or the canonical text when asked for it."""
    if value.__class__ is str:
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


_quote = json.encoder.encode_basestring_ascii  # what json.dumps(ensure_ascii=True) uses for every string
# FIELDS in sorted key order, as one format: the same bytes as json.dumps(sort_keys=True, separators=(",", ":"),
# ensure_ascii=True) of the object, without building and sorting a dict per entry (verify_audit's hot loop).
_TEMPLATE = (
    '{"action":%s,"actor_id":%s,"actor_kind":%s,"actor_label":%s,"api_key_id":%s,"created_at":"%s","data":%s,'
    '"id":%s,"ip":%s,"request_id":%s,"seq":%s,"target_id":%s,"target_type":%s,"tenant_id":%s,"user_agent":%s}'
)


def uuid_text(value) -> str:
    """A tenant id as lowercase dashed text: PostgreSQL's own text (or a UUID object), or SQLite's 32 hex digits."""
    if value.__class__ is str and len(value) == 36:
        return value
    return str(value if isinstance(value, uuid.UUID) else uuid.UUID(value))


def canonical_values(values: tuple) -> bytes:
    """The canonical bytes of an entry given as ``FIELDS`` in order (``created_at`` a datetime or text, ``data`` a
    value or its JSON text, ``ip`` text or an address object). Written out flat: it runs once per entry in
    ``verify_audit``, where each function call shows."""
    (seq, id_, created_at, action, actor_kind, actor_id, actor_label, api_key_id, tenant_id, target_type,
     target_id, ip, user_agent, request_id, data) = values
    if data.__class__ is str:
        data = json.loads(data)
    if ip is not None:
        ip = _quote(ip if ip.__class__ is str else str(ip))
    return (_TEMPLATE % (
        _quote(action), "null" if actor_id is None else int(actor_id), _quote(actor_kind), _quote(actor_label),
        _quote(api_key_id), utc_iso(created_at), _encode(data), int(id_), "null" if ip is None else ip,
        _quote(request_id), int(seq), _quote(target_id), _quote(target_type),
        "null" if tenant_id is None else _quote(uuid_text(tenant_id)), _quote(user_agent),
    )).encode("ascii")


def canonical(row: dict[str, Any]) -> bytes:
    """``canonical_values`` for an entry given as a mapping of ``FIELDS``."""
    return canonical_values(tuple(row[name] for name in FIELDS))


def canonical_reference(row: dict[str, Any]) -> bytes:
    """The definition, spelled out: the JSON object of ``FIELDS``, keys sorted, no whitespace, ASCII. The test
    holds ``canonical`` to it."""
    doc = {name: row[name] for name in FIELDS}
    doc["created_at"] = utc_iso(row["created_at"])
    doc["data"] = json.loads(doc["data"]) if isinstance(doc["data"], str) else doc["data"]
    doc["ip"] = None if doc["ip"] is None else str(doc["ip"])
    doc["tenant_id"] = None if doc["tenant_id"] is None else str(uuid.UUID(str(doc["tenant_id"])))
    return _encode(doc).encode("ascii")


def link(prev_hash: str, row: dict[str, Any]) -> str:
    return hashlib.sha256(prev_hash.encode("ascii") + canonical(row)).hexdigest()


def link_values(prev_hash: str, values: tuple) -> str:
    """``link`` for a row selected as ``FIELDS`` in order (the sealer and ``verify_audit``)."""
    return hashlib.sha256(prev_hash.encode("ascii") + canonical_values(values)).hexdigest()
