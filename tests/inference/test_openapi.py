"""The `/v1` API's OpenAPI description (``inference.openapi``, served at /v1/openapi.json): a valid OpenAPI 3.1
document that documents exactly the routes the gateway serves, each request schema listing exactly the fields
validation accepts, the headers and errors clients meet; shown beside the management API on /api/docs/."""

from __future__ import annotations

import re

import httpx
import jsonschema
import pytest
from openapi_spec_validator import validate

from core import ccaas, contract
from inference import openapi
from inference.gateway.app import ROUTES
from inference.gateway.validation import ALLOWED_FIELDS

METHODS = {"get", "put", "post", "delete", "patch", "head", "options", "trace"}
SCHEMA_OF = {"chat.completions": "ChatCompletionRequest", "completions": "CompletionRequest",
             "embeddings": "EmbeddingRequest"}


@pytest.fixture
def doc() -> dict:
    return openapi.document()


def test_document_is_valid_openapi_3_1(doc):
    assert doc["openapi"].startswith("3.1")
    validate(doc)  # raises on any violation of the OpenAPI 3.1 meta-schema


def test_every_served_route_is_documented_and_every_documented_route_is_served(doc):
    documented = {path: {m.upper() for m in item if m in METHODS} for path, item in doc["paths"].items()}
    served = {path: set(methods) - {"HEAD"} for path, methods in ROUTES.items()}
    assert documented == served


@pytest.mark.parametrize("endpoint", sorted(ALLOWED_FIELDS))
def test_request_schema_lists_exactly_the_accepted_fields(doc, endpoint):
    schema = doc["components"]["schemas"][SCHEMA_OF[endpoint]]
    assert set(schema["properties"]) == set(ALLOWED_FIELDS[endpoint])
    assert schema["additionalProperties"] is False  # anything else: 400 unrecognized_request_argument


def _validator(doc: dict, name: str) -> jsonschema.Draft202012Validator:
    return jsonschema.Draft202012Validator({"$ref": f"#/components/schemas/{name}", "components": doc["components"]})


def test_schemas_describe_what_clients_send_and_receive(doc):
    chat = _validator(doc, "ChatCompletionRequest")
    assert chat.is_valid({"model": "m", "messages": [{"role": "user", "content": "G'day"}], "max_tokens": 20,
                          "random_seed": 7, "safe_prompt": True, "top_k": 40, "stream": True,
                          "stream_options": {"include_usage": True}})
    assert not chat.is_valid({"model": "m", "messages": [{"role": "user", "content": "hi"}], "priority": 1})
    assert not chat.is_valid({"model": "m", "messages": [{"role": "user", "content": "hi"}], "temperature": 3})
    assert _validator(doc, "EmbeddingRequest").is_valid({"model": "e", "input": ["a", "b"], "output_dimension": 8})
    assert _validator(doc, "Error").is_valid(
        {"error": {"message": "x", "type": "invalid_request_error", "param": None, "code": "invalid_json"}})


def test_request_examples_are_valid_requests(doc):
    for path, schema in (("/v1/chat/completions", "ChatCompletionRequest"), ("/v1/completions", "CompletionRequest"),
                         ("/v1/embeddings", "EmbeddingRequest")):
        examples = doc["paths"][path]["post"]["requestBody"]["content"]["application/json"]["examples"]
        assert examples
        for example in examples.values():
            _validator(doc, schema).validate(example["value"])


def test_conversation_example_is_a_first_turn_the_gateway_accepts(doc):
    """Swagger UI's "Try it out" offers the first example: it must start a conversation (a model, no id), and pass
    the gateway's own checks, not only the schema."""
    from inference.gateway.conversations import Limits, parse_turn

    examples = doc["paths"]["/v1/conversation"]["post"]["requestBody"]["content"]["application/json"]["examples"]
    assert examples
    for example in examples.values():
        value = example["value"]
        _validator(doc, "ConversationTurnRequest").validate(value)
        turn = parse_turn(value, Limits.from_settings())
        assert turn.model and turn.conversation_id is None
        assert (turn.channel, turn.language, turn.customer_id) == ("whatsapp", "en-AU", "acct-1234")


def test_docs_page_calls_the_server_it_was_opened_on(doc, settings):
    """The first server is relative (resolved against the document's own URL), so "Try it out" stays on the page's
    host, which its CSP allows; the public URL follows for clients reading the file."""
    settings.WATTLE_BASE_URL = "https://api.wattle.example/"
    assert [s["url"] for s in openapi.document()["servers"]] == ["/", "https://api.wattle.example"]


def test_headers_and_errors_are_documented(doc):
    headers = doc["components"]["headers"]
    for name in ("x-request-id", "Retry-After", "x-ratelimit-limit-requests", "x-ratelimit-remaining-tokens",
                 "x-ratelimit-reset-requests"):
        assert name in headers
    params = {p["name"]: p for p in doc["components"]["parameters"].values()}
    assert {"x-wattle-redact", "x-wattle-customer-id"} <= set(params)
    pattern = params["x-wattle-customer-id"]["schema"]["pattern"]
    assert pattern == f"^{ccaas._CUSTOMER_ID.pattern}$"  # the rule the gateway applies
    for value, ok in (("acct-1234", True), ("crm:42@west", True), ("", False), ("x" * 65, False),
                      ("Jane Citizen", False)):
        assert bool(re.fullmatch(pattern.strip("^$"), value)) is ok
        assert contract.valid_customer_id(value) is ok
    chat = doc["paths"]["/v1/chat/completions"]["post"]
    assert {"400", "401", "403", "404", "429", "503"} <= set(chat["responses"])
    assert "Retry-After" in doc["components"]["responses"]["Error429"]["headers"]
    assert "text/event-stream" in chat["responses"]["200"]["content"]


# --- served by the gateway ------------------------------------------------------------------------------
def _concrete(path: str) -> str:
    return re.sub(r"\{[^}]+\}", "mistralai/Mistral-7B-Instruct-v0.3", path)


def test_gateway_serves_the_document_and_every_documented_route(gateway_ready, acme, issue_key):
    base = gateway_ready.base_url
    served = httpx.get(f"{base}/v1/openapi.json")  # public: no key
    assert served.status_code == 200 and served.headers["content-type"].startswith("application/json")
    assert served.json() == openapi.document()
    for path, item in served.json()["paths"].items():
        for method in set(item) & METHODS:
            answer = httpx.request(method.upper(), f"{base}{_concrete(path)}", json={})
            assert answer.status_code != 404 or answer.json()["error"]["code"] != "unknown_url", (method, path)
    unknown = httpx.get(f"{base}/v1/conversations-nope")
    assert unknown.status_code == 404 and unknown.json()["error"]["code"] == "unknown_url"
    wrong = httpx.post(f"{base}/v1/openapi.json", json={})
    assert wrong.status_code == 405 and wrong.json()["error"]["code"] == "method_not_allowed"


def test_response_headers_clients_meet_are_documented(gateway_ready, acme, issue_key, unthrottled):
    unthrottled(acme)
    doc = openapi.document()
    documented = {h.lower() for h in doc["components"]["headers"]}
    key = issue_key(acme)
    base = gateway_ready.base_url
    models = httpx.get(f"{base}/v1/models", headers={"authorization": f"Bearer {key}"}).json()["data"]
    model = next(m["id"] for m in models if "e5" not in m["id"])  # a chat model, not the embedding one
    answer = httpx.post(f"{base}/v1/chat/completions", headers={"authorization": f"Bearer {key}"},
                        json={"model": model, "messages": [{"role": "user", "content": "G'day"}], "max_tokens": 4})
    assert answer.status_code == 200
    ours = {h for h in answer.headers if h.startswith("x-") and h != "x-content-type-options"}
    assert "x-request-id" in ours and ours <= documented
    refused = httpx.post(f"{base}/v1/chat/completions", headers={"authorization": f"Bearer {key}"},
                         json={"model": model, "messages": [{"role": "user", "content": "hi"}], "priority": 1})
    assert refused.status_code == 400
    assert _validator(doc, "Error").is_valid(refused.json())


def test_docs_page_offers_both_apis_under_our_header(client, db):
    management = client.get("/api/docs/")
    assert management.status_code == 200
    page = management.content.decode()
    assert 'href="?api=inference"' in page and "Management API" in page and "Inference API" in page
    assert 'class="topbar"' in page and "Back to the console" in page
    assert "<script>" not in page and "<style>" not in page  # strict CSP: files only
    inference = client.get("/api/docs/?api=inference")
    assert inference.status_code == 200 and 'aria-current="page"' in inference.content.decode()
    script = client.get("/api/docs/?api=inference&script=").content.decode()
    assert "/v1/openapi.json" in script
    assert "/api/schema/" in client.get("/api/docs/?script=").content.decode()
    assert client.get("/api/docs/?api=nonsense").status_code == 200  # unknown: the management API
