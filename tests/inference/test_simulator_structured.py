"""The simulator honours ``response_format``: a schema-valid instance for ``json_schema`` (property-tested over
generated schemas), a JSON object for ``json_object``, streamed or not, the same for the same seed, and broken
JSON on request (the ``invalid_structured_outputs`` knob) for tests of a caller's retry path."""

from __future__ import annotations

import json
import random

import jsonschema
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from inference.simulator import structured
from tests.fakes.vllm import SimulatorProcess, raw_request, run_simulator, sse_payloads

MODEL = "mistralai/Mistral-7B-Instruct-v0.3"
QA_SCHEMA = {
    "type": "object",
    "additionalProperties": False,
    "required": ["summary", "overall", "rubric"],
    "properties": {
        "summary": {"type": "string", "minLength": 1, "maxLength": 400},
        "overall": {"type": "integer", "minimum": 0, "maximum": 100},
        "rubric": {
            "type": "array", "minItems": 5, "maxItems": 5,
            "items": {
                "type": "object", "required": ["item", "score", "reason"], "additionalProperties": False,
                "properties": {
                    "item": {"enum": ["greeting", "identification", "empathy", "resolution", "compliance"]},
                    "score": {"type": "integer", "minimum": 0, "maximum": 100},
                    "reason": {"type": "string", "maxLength": 20},
                },
            },
        },
    },
}


# --- schemas, generated ----------------------------------------------------------------------------
def _scalar_schemas():
    integers = st.tuples(st.integers(-1000, 1000), st.integers(0, 500)).map(
        lambda t: {"type": "integer", "minimum": t[0], "maximum": t[0] + t[1]})
    exclusive = st.integers(-50, 50).map(lambda low: {"type": "integer", "exclusiveMinimum": low,
                                                      "exclusiveMaximum": low + 3})
    multiples = st.tuples(st.integers(0, 100), st.integers(1, 7)).map(
        lambda t: {"type": "integer", "minimum": t[0], "maximum": t[0] + 3 * t[1], "multipleOf": t[1]})
    numbers = st.tuples(st.floats(-1e3, 1e3), st.floats(0.01, 1e3)).map(
        lambda t: {"type": "number", "minimum": t[0], "maximum": t[0] + t[1]})
    strings = st.tuples(st.integers(0, 30), st.integers(0, 60)).map(
        lambda t: {"type": "string", "minLength": t[0], "maxLength": t[0] + t[1]})
    enums = st.lists(st.one_of(st.text(max_size=10), st.integers()), min_size=1, max_size=5, unique=True).map(
        lambda values: {"enum": values})
    return st.one_of(integers, exclusive, multiples, numbers, strings, enums,
                     st.sampled_from([{"type": "boolean"}, {"type": "null"}, {"type": ["string", "null"]},
                                      {"const": "fixed"}, {}]))


def _schemas():
    names = st.text(alphabet="abcdefghijklmnopqrstuvwxyz_", min_size=1, max_size=8)

    def extend(children):
        objects = st.dictionaries(names, children, max_size=5).flatmap(
            lambda props: st.builds(
                lambda required, closed: {"type": "object", "properties": props, "required": required,
                                          "additionalProperties": not closed},
                st.lists(st.sampled_from(sorted(props)), unique=True) if props else st.just([]),
                st.booleans(),
            ))
        arrays = st.tuples(children, st.integers(0, 4), st.integers(0, 3)).map(
            lambda t: {"type": "array", "items": t[0], "minItems": t[1], "maxItems": t[1] + t[2]})
        any_of = st.lists(children, min_size=1, max_size=3).map(lambda branches: {"anyOf": branches})
        return st.one_of(objects, arrays, any_of)

    return st.recursive(_scalar_schemas(), extend, max_leaves=12)


@settings(max_examples=300, suppress_health_check=[HealthCheck.too_slow])
@given(schema=_schemas(), seed=st.integers(0, 2**32))
def test_an_instance_validates_against_its_generated_schema(schema, seed):
    value = structured.instance(schema, random.Random(seed), root=schema)
    jsonschema.validate(value, schema)


@given(seed=st.integers(0, 2**32))
def test_refs_and_all_of_are_followed(seed):
    schema = {
        "$defs": {"score": {"type": "integer", "minimum": 0, "maximum": 100}},
        "type": "object", "required": ["a", "b"],
        "properties": {
            "a": {"$ref": "#/$defs/score"},
            "b": {"allOf": [{"type": "object", "properties": {"x": {"type": "string", "maxLength": 3}},
                             "required": ["x"]},
                            {"properties": {"y": {"$ref": "#/$defs/score"}}, "required": ["y"]}]},
        },
    }
    value = structured.instance(schema, random.Random(seed), root=schema)
    jsonschema.validate(value, schema)
    assert set(value["b"]) == {"x", "y"}


def test_invalid_text_is_never_json():
    response_format = {"type": "json_schema", "json_schema": {"name": "qa", "schema": QA_SCHEMA}}
    for index in range(50):
        text = structured.structured_text(response_format, bytes([index]), invalid=True)
        with pytest.raises(json.JSONDecodeError):
            json.loads(text)


# --- over HTTP -----------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def sim():
    with run_simulator() as process:
        yield process


def _chat(sim: SimulatorProcess, **body):
    body = {"model": MODEL, "messages": [{"role": "user", "content": "Score this call."}], **body}
    return raw_request(sim.url("/v1/chat/completions"), json_body=body)


def _json_schema(schema: dict) -> dict:
    return {"type": "json_schema", "json_schema": {"name": "result", "schema": schema, "strict": True}}


def test_chat_returns_a_schema_valid_instance(sim):
    response = _chat(sim, seed=7, response_format=_json_schema(QA_SCHEMA))
    assert response.status == 200, response.body
    body = response.json()
    content = body["choices"][0]["message"]["content"]
    jsonschema.validate(json.loads(content), QA_SCHEMA)
    assert body["choices"][0]["finish_reason"] == "stop"
    assert body["usage"]["completion_tokens"] > 5


def test_same_seed_same_instance_other_seed_may_differ(sim):
    first = [_chat(sim, seed=seed, response_format=_json_schema(QA_SCHEMA)).json() for seed in (1, 1, 2)]
    contents = [b["choices"][0]["message"]["content"] for b in first]
    assert contents[0] == contents[1]
    assert contents[0] != contents[2]


def test_stream_deltas_join_to_the_non_stream_instance(sim):
    format_ = _json_schema(QA_SCHEMA)
    whole = _chat(sim, seed=3, response_format=format_).json()["choices"][0]["message"]["content"]
    streamed = _chat(sim, seed=3, response_format=format_, stream=True)
    assert streamed.status == 200
    deltas = []
    for payload in sse_payloads(streamed.body):
        if payload == b"[DONE]":
            continue
        for choice in json.loads(payload).get("choices") or ():
            deltas.append(choice["delta"].get("content") or "")
    assert len([d for d in deltas if d]) > 3  # token by token, not in one piece
    assert "".join(deltas) == whole


def test_json_object_returns_an_object(sim):
    body = _chat(sim, seed=4, response_format={"type": "json_object"}).json()
    assert isinstance(json.loads(body["choices"][0]["message"]["content"]), dict)


def test_text_response_format_is_ordinary_text(sim):
    body = _chat(sim, seed=4, response_format={"type": "text"}).json()
    assert body["choices"][0]["message"]["content"].startswith(("This", "Simulated", "A simulated"))


def test_the_knob_breaks_exactly_as_many_replies_as_asked(sim):
    format_ = _json_schema(QA_SCHEMA)
    assert sim.control(invalid_structured_outputs=2)["knobs"]["invalid_structured_outputs"] == 2
    contents = [_chat(sim, seed=5, response_format=format_).json()["choices"][0]["message"]["content"]
                for _ in range(3)]
    for broken in contents[:2]:
        with pytest.raises(json.JSONDecodeError):
            json.loads(broken)
    jsonschema.validate(json.loads(contents[2]), QA_SCHEMA)
    assert sim.state()["knobs"]["invalid_structured_outputs"] == 0
    # Plain text requests never use it up.
    sim.control(invalid_structured_outputs=1)
    _chat(sim, seed=5)
    assert sim.state()["knobs"]["invalid_structured_outputs"] == 1
    sim.control(invalid_structured_outputs=0)


def test_a_bad_knob_value_is_refused(sim):
    response = raw_request(sim.url("/sim/control"), json_body={"invalid_structured_outputs": -1})
    assert response.status == 400
    response = raw_request(sim.url("/sim/control"), json_body={"invalid_structured_outputs": True})
    assert response.status == 400


def test_an_unsatisfiable_schema_is_a_400(sim):
    response = _chat(sim, response_format=_json_schema({"type": "integer", "minimum": 5, "maximum": 1}))
    assert response.status == 400
    assert response.json()["error"]["param"] == "response_format"


@pytest.mark.parametrize("schema", [
    {"type": "array", "minItems": "many"},
    {"type": "string", "maxLength": [3]},
    {"type": "integer", "minimum": "zero"},
    {"type": "object", "properties": ["a", "b"]},
    {"allOf": [{"properties": "nope"}]},
    {"type": "integer", "minimum": 10**30, "maximum": 10**31},  # past what JSON encoders write
])
def test_a_malformed_schema_is_a_400_not_a_crash(sim, schema):
    response = _chat(sim, response_format=_json_schema(schema))
    assert response.status == 400, response.body
    assert response.json()["error"]["param"] == "response_format"


@pytest.mark.parametrize("schema", [
    {"type": "array", "minItems": 10**9},
    {"type": "string", "minLength": 10**9},
    # Each level small, the whole vast: 20 ** 6 objects.
    {"$defs": {"n": {"type": "array", "minItems": 20, "items": {"$ref": "#/$defs/m"}},
               "m": {"type": "array", "minItems": 20, "items": {"$ref": "#/$defs/o"}},
               "o": {"type": "array", "minItems": 20, "items": {"type": "array", "minItems": 20,
                                                                 "items": {"type": "array", "minItems": 20}}}},
     "type": "array", "minItems": 20, "items": {"$ref": "#/$defs/n"}},
])
def test_a_schema_asking_for_a_vast_instance_is_refused_at_once(schema):
    with pytest.raises(structured.Unsupported):
        structured.structured_text(_json_schema(schema), b"k")
