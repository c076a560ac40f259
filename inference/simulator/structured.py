"""Structured output: the JSON text a request's ``response_format`` asks for.

vLLM constrains decoding to a grammar built from the JSON schema (``{"type": "json_schema", "json_schema":
{"name", "schema", "strict"}}``) or to any JSON object (``{"type": "json_object"}``). The simulator has no
sampler to constrain, so it builds an instance of the schema directly, from a random generator seeded by the
request's key: the same request (prompt and seed) always gets the same instance.

What an instance honours: ``type`` (one or a list), ``enum``, ``const``, objects' ``properties`` (all of them,
so ``required`` holds), ``additionalProperties``, arrays' ``items``/``prefixItems`` with ``minItems``/``maxItems``,
strings' ``minLength``/``maxLength``, numbers' and integers' ``minimum``/``maximum``/``exclusiveMinimum``/
``exclusiveMaximum``/``multipleOf`` (whole ones), ``anyOf``/``oneOf`` (the first branch), ``allOf`` of object
schemas, and local ``$ref`` (``#/$defs/...``, ``#/definitions/...``). Not honoured: ``pattern`` and
``format`` (a string is plain words), ``uniqueItems`` beyond what distinct words give, and ``not``/``if``/
``then``. docs/simulator.md lists the same.
"""

from __future__ import annotations

import contextvars
import math
import random
from typing import Any

import orjson

_WORDS = (
    "simulated", "structured", "reply", "from", "the", "vLLM", "simulator", "no", "model", "was", "run",
    "deterministic", "value", "for", "testing",
)
_MAX_DEPTH = 12
# What one reply may hold: the simulator builds it in memory, from a client's schema. A schema asking for more
# (``"minItems": 1e9``) is a 400 at once rather than a process busy or out of memory.
_MAX_VALUES = 10_000
_MAX_STRING = 10_000
_BUDGET: contextvars.ContextVar[list[int]] = contextvars.ContextVar("structured_budget")
_DEFAULT_STRING_WORDS = (2, 6)


class Unsupported(ValueError):
    """A schema the simulator cannot build an instance of (a dangling ``$ref``, say)."""


def wants_structured(response_format: Any) -> str | None:
    """``"json_schema"`` or ``"json_object"`` when the request asks for JSON, else None (text, absent)."""
    if not isinstance(response_format, dict):
        return None
    kind = response_format.get("type")
    if kind == "json_object":
        return kind
    if kind == "json_schema" and isinstance(response_format.get("json_schema"), dict):
        return kind
    return None


def schema_of(response_format: dict) -> dict | bool:
    """The JSON schema of a ``json_schema`` response format (OpenAI's ``schema``; vLLM also reads ``json_schema``
    under the same object for older clients)."""
    spec = response_format.get("json_schema") or {}
    schema = spec.get("schema", spec.get("json_schema", {}))
    return schema if isinstance(schema, dict | bool) else {}


def structured_text(response_format: dict, key: bytes, *, invalid: bool = False) -> str:
    """The reply text for a request asking for JSON: compact JSON of an instance. ``invalid``: the text a broken
    constrained decode would give (a cut-off instance, never valid JSON), for tests of a caller's retry path."""
    rng = random.Random(key)
    try:
        if wants_structured(response_format) == "json_schema":
            schema = schema_of(response_format)
            value = instance(schema, rng, root=schema if isinstance(schema, dict) else {})
        else:
            value = {"reply": " ".join(rng.choice(_WORDS) for _ in range(4))}
        text = orjson.dumps(value).decode()
    except Unsupported:
        raise
    except (TypeError, ValueError, AttributeError, KeyError, OverflowError, RecursionError, orjson.JSONEncodeError):
        # A keyword of the wrong type (``"minItems": "many"``, ``"properties": [...]``) or a number past what JSON
        # encoders write: the client's schema is at fault, so a 400 as vLLM gives, never a crash.
        raise Unsupported("the schema is malformed") from None
    if invalid:
        # Half an object/array/string is never JSON; a bare scalar gets a stray character instead.
        text = text[: max(1, len(text) // 2)] if len(text) > 2 and text[0] in "{[\"" else text + "}"
    return text


def instance(schema: Any, rng: random.Random, *, root: dict, depth: int = 0) -> Any:
    """A value valid against ``schema`` (within what the module's docstring lists)."""
    if depth == 0:
        token = _BUDGET.set([_MAX_VALUES])
        try:
            return _instance(schema, rng, root=root, depth=0)
        finally:
            _BUDGET.reset(token)
    return _instance(schema, rng, root=root, depth=depth)


def _instance(schema: Any, rng: random.Random, *, root: dict, depth: int) -> Any:
    if depth > _MAX_DEPTH:
        raise Unsupported("schema nests too deeply")
    budget = _BUDGET.get()
    budget[0] -= 1
    if budget[0] < 0:  # each level modest, the whole vast (arrays of arrays): refused, not built
        raise Unsupported(f"the schema asks for more than {_MAX_VALUES} values")
    if schema is True or schema == {} or schema is None:
        return " ".join(rng.choice(_WORDS) for _ in range(2))
    if schema is False:
        raise Unsupported("a schema of false admits no value")
    if not isinstance(schema, dict):
        raise Unsupported("a schema must be an object or a boolean")
    if "$ref" in schema:
        return instance(_resolve(schema["$ref"], root), rng, root=root, depth=depth + 1)
    if "const" in schema:
        return schema["const"]
    if isinstance(schema.get("enum"), list) and schema["enum"]:
        return rng.choice(schema["enum"])
    for combinator in ("anyOf", "oneOf"):
        branches = schema.get(combinator)
        if isinstance(branches, list) and branches:
            merged = {k: v for k, v in schema.items() if k != combinator}
            return instance({**merged, **branches[0]}, rng, root=root, depth=depth + 1)
    if isinstance(schema.get("allOf"), list):
        merged = {k: v for k, v in schema.items() if k != "allOf"}
        for part in schema["allOf"]:
            part = _resolve(part["$ref"], root) if isinstance(part, dict) and "$ref" in part else part
            if isinstance(part, dict):
                merged.setdefault("properties", {}).update(part.get("properties", {}))
                merged["required"] = [*merged.get("required", []), *part.get("required", [])]
                merged.update({k: v for k, v in part.items() if k not in ("properties", "required")})
        return instance(merged, rng, root=root, depth=depth + 1)
    kind = schema.get("type")
    if isinstance(kind, list):
        kind = next((k for k in kind if k != "null"), kind[0] if kind else None)
    if kind is None:
        kind = "object" if "properties" in schema else "array" if "items" in schema else "string"
    maker = _MAKERS.get(kind)
    if maker is None:
        raise Unsupported(f"unknown type {kind!r}")
    return maker(schema, rng, root, depth)


def _resolve(ref: Any, root: dict) -> Any:
    if not isinstance(ref, str) or not ref.startswith("#"):
        raise Unsupported("only local $ref is supported")
    node: Any = root
    for part in filter(None, ref[1:].split("/")):
        part = part.replace("~1", "/").replace("~0", "~")
        if not isinstance(node, dict) or part not in node:
            raise Unsupported(f"$ref {ref[:100]} does not resolve")
        node = node[part]
    return node


def _object(schema: dict, rng: random.Random, root: dict, depth: int) -> dict:
    properties = schema.get("properties") or {}
    out = {name: instance(sub, rng, root=root, depth=depth + 1) for name, sub in properties.items()}
    # A required name without a property schema takes any value additionalProperties allows.
    extra = schema.get("additionalProperties", True)
    for name in schema.get("required") or ():
        if name not in out:
            out[name] = instance(extra if isinstance(extra, dict) else {}, rng, root=root, depth=depth + 1)
    return out


def _array(schema: dict, rng: random.Random, root: dict, depth: int) -> list:
    low = _size(schema, "minItems", _MAX_VALUES)
    high = schema.get("maxItems")
    prefix = schema.get("prefixItems") or []
    count = max(low, len(prefix), 1)
    if high is not None:
        count = min(count, int(high))
    items = schema.get("items", {})
    out = []
    for index in range(count):
        sub = prefix[index] if index < len(prefix) else items
        out.append(instance(sub if sub is not None else {}, rng, root=root, depth=depth + 1))
    return out


def _string(schema: dict, rng: random.Random, _root: dict, _depth: int) -> str:
    low = _size(schema, "minLength", _MAX_STRING)
    high = schema.get("maxLength")
    text = " ".join(rng.choice(_WORDS) for _ in range(rng.randint(*_DEFAULT_STRING_WORDS)))
    while len(text) < low:
        text += " " + rng.choice(_WORDS)
    if high is not None:
        text = text[: int(high)].rstrip() if len(text[: int(high)].rstrip()) >= low else text[: int(high)]
    return text


def _size(schema: dict, name: str, most: int) -> int:
    value = int(schema.get(name, 0))
    if value > most:
        raise Unsupported(f"{name} above {most} is more than the simulator builds")
    return value


def _bounds(schema: dict, integer: bool) -> tuple[float, float]:
    low = schema.get("minimum", -math.inf)
    high = schema.get("maximum", math.inf)
    step = 1 if integer else 1e-6
    if "exclusiveMinimum" in schema and not isinstance(schema["exclusiveMinimum"], bool):
        low = max(low, schema["exclusiveMinimum"] + step)
    if "exclusiveMaximum" in schema and not isinstance(schema["exclusiveMaximum"], bool):
        high = min(high, schema["exclusiveMaximum"] - step)
    if low == -math.inf and high == math.inf:
        low, high = 0, 100
    elif low == -math.inf:
        low = high - 100
    elif high == math.inf:
        high = low + 100
    if low > high:
        raise Unsupported("the schema's bounds admit no number")
    return low, high


def _integer(schema: dict, rng: random.Random, _root: dict, _depth: int) -> int:
    low, high = _bounds(schema, True)
    low, high = math.ceil(low), math.floor(high)
    multiple = schema.get("multipleOf")
    if isinstance(multiple, int) and not isinstance(multiple, bool) and multiple > 0:
        first = math.ceil(low / multiple)
        last = math.floor(high / multiple)
        if first > last:
            raise Unsupported("no multiple of multipleOf within the bounds")
        return rng.randint(first, last) * multiple
    if low > high:
        raise Unsupported("the schema's bounds admit no integer")
    return rng.randint(low, high)


def _number(schema: dict, rng: random.Random, root: dict, depth: int) -> float | int:
    multiple = schema.get("multipleOf")
    if isinstance(multiple, int) and not isinstance(multiple, bool):
        return _integer(schema, rng, root, depth)  # a fractional multipleOf is not honoured (see above)
    low, high = _bounds(schema, False)
    value = round(rng.uniform(low, high), 2)
    return min(max(value, low), high)


_MAKERS = {
    "object": _object,
    "array": _array,
    "string": _string,
    "integer": _integer,
    "number": _number,
    "boolean": lambda _s, rng, _r, _d: rng.random() < 0.5,
    "null": lambda _s, _rng, _r, _d: None,
}
