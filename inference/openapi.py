"""The OpenAPI 3.1 description of the `/v1` inference API, served by the gateway at ``/v1/openapi.json`` and shown
beside the management API on ``/api/docs/``.

Written by hand rather than generated, because the gateway is a lean ASGI app with no schema framework; kept
honest by tests (``tests/inference/test_openapi.py``): the document validates against the OpenAPI 3.1
meta-schema, documents exactly the routes the gateway serves (``inference.gateway.app.ROUTES``), and each request
schema lists exactly the fields validation accepts (``inference.gateway.validation.ALLOWED_FIELDS``).

Adding an endpoint: write a function returning its path items (see ``_models_paths``), add it to ``SECTIONS``,
and add the route to ``ROUTES``; the tests fail until both agree.

Django-free except for settings (the server URL), so the data plane can import it.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

import orjson
from django.conf import settings

Schema = dict[str, Any]
# core.ccaas's rule for an end-customer id (1 to 64 letters, digits or . _ : @ + -); the tests hold them equal.
CUSTOMER_ID_PATTERN = "^[A-Za-z0-9._:@+\\-]{1,64}$"


def _ref(name: str) -> Schema:
    return {"$ref": f"#/components/schemas/{name}"}


def _nullable(schema: Schema) -> Schema:
    return {"anyOf": [schema, {"type": "null"}]}


# --- request fields ----------------------------------------------------------------------------------
_STOP = {"description": "Up to 4 sequences where generation stops (not included in the text).",
         "anyOf": [{"type": "string"}, {"type": "array", "items": {"type": "string"}, "maxItems": 4},
                   {"type": "null"}]}
_COMMON: dict[str, Schema] = {
    "model": {"type": "string", "description": "A model your key may use: see `GET /v1/models`.",
              "examples": ["mistralai/Mistral-7B-Instruct-v0.3"]},
    "frequency_penalty": {"type": ["number", "null"], "minimum": -2, "maximum": 2},
    "presence_penalty": {"type": ["number", "null"], "minimum": -2, "maximum": 2},
    "logit_bias": {"type": ["object", "null"], "description": "Token id (as a string) to a bias in [-100, 100].",
                   "additionalProperties": {"type": "number"}},
    "max_tokens": {"type": ["integer", "null"], "minimum": 1,
                   "description": "At most this many generated tokens per choice (a JSON integer). Above the "
                                  "room the prompt leaves in the context, reduced to fit. Chat without it: "
                                  "1,024."},
    "n": {"type": ["integer", "null"], "minimum": 1, "maximum": 8, "default": 1},
    "seed": {"type": ["integer", "null"], "description": "Reproducible sampling."},
    "random_seed": {"type": ["integer", "null"], "description": "Mistral's name for `seed`."},
    "stop": _STOP,
    "stream": {"type": ["boolean", "null"], "default": False,
               "description": "Answer as server-sent events (`text/event-stream`), ending with `data: [DONE]`."},
    "stream_options": {"anyOf": [{"type": "object", "properties": {
        "include_usage": {"type": "boolean", "description": "A last chunk with the token counts."},
        "continuous_usage_stats": {"type": "boolean"}}, "additionalProperties": False}, {"type": "null"}],
        "description": "Only with `stream: true`."},
    "temperature": {"type": ["number", "null"], "minimum": 0, "maximum": 2},
    "top_p": {"type": ["number", "null"], "exclusiveMinimum": 0, "maximum": 1},
    "response_format": {"type": ["object", "null"], "description": "`{\"type\": \"json_object\"}` or "
                        "`{\"type\": \"json_schema\", \"json_schema\": {...}}`."},
    "logprobs": {"type": ["boolean", "null"]},
    "user": {"type": ["string", "null"], "maxLength": 256,
             "description": "Your end customer's id (an account number or CRM id, never a name or email): 1 to 64 "
                            "letters, digits or `. _ : @ + -`; any other string is kept as `sha256:` and the first "
                            "40 hex digits of its SHA-256. The "
                            "`x-wattle-customer-id` header, when sent, takes its place."},
}
_SAMPLING_EXTRAS: dict[str, Schema] = {
    "top_k": {"type": ["integer", "null"], "description": "vLLM: -1 or 0 (off), or the number of top tokens."},
    "min_p": {"type": ["number", "null"], "minimum": 0, "maximum": 1, "description": "vLLM sampling extra."},
    "repetition_penalty": {"type": ["number", "null"], "exclusiveMinimum": 0, "maximum": 2,
                           "description": "vLLM sampling extra."},
    "min_tokens": {"type": "integer", "minimum": 0, "description": "vLLM: at least this many tokens (no more "
                   "than `max_tokens`)."},
    "stop_token_ids": {"type": ["array", "null"], "items": {"type": "integer"}, "description": "vLLM."},
    "include_stop_str_in_output": {"type": "boolean", "description": "vLLM."},
    "skip_special_tokens": {"type": "boolean", "description": "vLLM."},
    "spaces_between_special_tokens": {"type": "boolean", "description": "vLLM."},
    "structured_outputs": {"type": ["object", "null"], "description": "vLLM's structured outputs: `json`, "
                           "`regex`, `choice` or `grammar`."},
}
_BOOKKEEPING: dict[str, Schema] = {
    name: {"description": "Accepted for OpenAI compatibility and ignored."}
    for name in ("metadata", "store", "service_tier", "safety_identifier", "prompt_cache_key")
}
_MESSAGE = {
    "type": "object", "required": ["role"],
    "properties": {
        "role": {"enum": ["system", "developer", "user", "assistant", "tool"]},
        "content": {"description": "Text, or an array of text parts (`{\"type\": \"text\", \"text\": ...}`); "
                    "the models take text only.",
                    "anyOf": [{"type": "string"}, {"type": "array", "items": {"type": "object"}},
                              {"type": "null"}]},
        "name": {"type": "string"},
        "tool_calls": {"type": "array", "items": {"type": "object"}},
        "tool_call_id": {"type": "string"},
    },
}
_CHAT_FIELDS: dict[str, Schema] = {
    **_COMMON, **_SAMPLING_EXTRAS, **_BOOKKEEPING,
    "messages": {"type": "array", "minItems": 1, "items": _MESSAGE},
    "max_completion_tokens": {"type": ["integer", "null"], "minimum": 1, "description": "OpenAI's newer name "
                              "for `max_tokens`."},
    "top_logprobs": {"type": ["integer", "null"], "minimum": 0, "maximum": 20, "description": "With "
                     "`logprobs: true`."},
    "tools": {"type": ["array", "null"], "minItems": 1, "items": {"type": "object", "required": ["function"],
              "properties": {"type": {"const": "function"}, "function": {"type": "object", "required": ["name"],
                             "properties": {"name": {"type": "string"}, "description": {"type": "string"},
                                            "parameters": {"type": "object"}}}}}},
    "tool_choice": {"description": "`none`, `auto`, `required`, Mistral's `any` (= `required`), or "
                    "`{\"type\": \"function\", \"function\": {\"name\": ...}}`; only with `tools`.",
                    "anyOf": [{"enum": ["none", "auto", "required", "any"]}, {"type": "object"}, {"type": "null"}]},
    "parallel_tool_calls": {"type": ["boolean", "null"]},
    "safe_prompt": {"type": "boolean", "description": "Mistral: prepend Mistral's guardrail system prompt."},
    "add_generation_prompt": {"type": "boolean", "description": "vLLM chat-template control."},
    "continue_final_message": {"type": "boolean", "description": "vLLM: continue the last assistant message."},
}
_COMPLETION_FIELDS: dict[str, Schema] = {
    **_COMMON, **_SAMPLING_EXTRAS,
    "prompt": {"description": "Text, texts, token ids, or lists of token ids; not empty.",
               "anyOf": [{"type": "string"}, {"type": "array", "minItems": 1, "items": {"type": "string"}},
                         {"type": "array", "minItems": 1, "items": {"type": "integer", "minimum": 0}},
                         {"type": "array", "minItems": 1, "items": {"type": "array", "items": {"type": "integer"}}}]},
    "logprobs": {"type": ["integer", "null"], "minimum": 0, "description": "Log probabilities of this many "
                 "top tokens."},
    "echo": {"type": ["boolean", "null"]},
    "suffix": {"type": ["string", "null"]},
}
_EMBEDDING_FIELDS: dict[str, Schema] = {
    "model": _COMMON["model"],
    "input": {"description": "Text, texts, token ids, or lists of token ids; not empty.",
              "anyOf": [{"type": "string"}, {"type": "array", "minItems": 1, "items": {"type": "string"}},
                        {"type": "array", "minItems": 1, "items": {"type": "integer", "minimum": 0}},
                        {"type": "array", "minItems": 1, "items": {"type": "array", "items": {"type": "integer"}}}]},
    "encoding_format": {"enum": ["float", "base64"], "default": "float"},
    "dimensions": {"type": ["integer", "null"], "minimum": 1},
    "output_dimension": {"type": ["integer", "null"], "minimum": 1, "description": "Mistral's name for "
                         "`dimensions`."},
    "output_dtype": {"type": ["string", "null"], "description": "Mistral: `float` only."},
    "user": _COMMON["user"],
}
REQUEST_FIELDS: dict[str, dict[str, Schema]] = {
    "chat.completions": _CHAT_FIELDS, "completions": _COMPLETION_FIELDS, "embeddings": _EMBEDDING_FIELDS,
}


def _request(name: str, endpoint: str, required: list[str], description: str) -> Schema:
    fields = REQUEST_FIELDS[endpoint]
    return {"type": "object", "title": name, "description": description, "required": required,
            "properties": {f: fields[f] for f in [*required, *sorted(set(fields) - set(required))]},
            "additionalProperties": False}


# --- responses ---------------------------------------------------------------------------------------
_USAGE = {"type": "object", "required": ["prompt_tokens", "total_tokens"], "properties": {
    "prompt_tokens": {"type": "integer"}, "completion_tokens": {"type": "integer"},
    "total_tokens": {"type": "integer"}}, "description": "As the model's own tokenizer counted them."}
_SCHEMAS: dict[str, Schema] = {
    "Error": {
        "type": "object", "required": ["error"],
        "description": "OpenAI's error shape. Messages quote at most 64 characters of anything you sent.",
        "properties": {"error": {"type": "object", "required": ["message", "type", "param", "code"], "properties": {
            "message": {"type": "string"},
            "type": {"enum": ["invalid_request_error", "server_error", "rate_limit_error", "insufficient_quota",
                              "permission_error", "authentication_error"], "description": "OpenAI's error types."},
            "param": {"type": ["string", "null"], "description": "The field at fault, if any."},
            "code": {"type": ["string", "integer", "null"], "examples": ["model_not_found"]}}}},
    },
    "Usage": _USAGE,
    "ChatCompletion": {
        "type": "object", "required": ["id", "object", "created", "model", "choices"],
        "properties": {
            "id": {"type": "string"}, "object": {"const": "chat.completion"}, "created": {"type": "integer"},
            "model": {"type": "string"},
            "choices": {"type": "array", "items": {"type": "object", "properties": {
                "index": {"type": "integer"},
                "message": {"type": "object", "properties": {
                    "role": {"const": "assistant"}, "content": {"type": ["string", "null"]},
                    "tool_calls": {"type": "array", "items": {"type": "object"}}}},
                "logprobs": {"type": ["object", "null"]},
                "finish_reason": {"enum": ["stop", "length", "tool_calls", "abort", None]}}}},
            "usage": _ref("Usage"),
        },
    },
    "ChatCompletionChunk": {
        "type": "object", "description": "One server-sent event `data:` line of a chat stream. With "
        "`stream_options.include_usage`, the last chunk has `choices: []` and the usage. A model failing part-way "
        "sends an `Error` event, then `data: [DONE]`.",
        "required": ["id", "object", "created", "model", "choices"],
        "properties": {
            "id": {"type": "string"}, "object": {"const": "chat.completion.chunk"}, "created": {"type": "integer"},
            "model": {"type": "string"},
            "choices": {"type": "array", "items": {"type": "object", "properties": {
                "index": {"type": "integer"}, "delta": {"type": "object"},
                "finish_reason": {"type": ["string", "null"]}}}},
            "usage": _nullable(_ref("Usage")),
        },
    },
    "Completion": {
        "type": "object", "required": ["id", "object", "created", "model", "choices"],
        "properties": {
            "id": {"type": "string"}, "object": {"const": "text_completion"}, "created": {"type": "integer"},
            "model": {"type": "string"},
            "choices": {"type": "array", "items": {"type": "object", "properties": {
                "index": {"type": "integer"}, "text": {"type": "string"}, "logprobs": {"type": ["object", "null"]},
                "finish_reason": {"type": ["string", "null"]}}}},
            "usage": _ref("Usage"),
        },
    },
    "EmbeddingList": {
        "type": "object", "required": ["object", "data", "model"],
        "properties": {
            "object": {"const": "list"}, "model": {"type": "string"},
            "data": {"type": "array", "items": {"type": "object", "required": ["object", "index", "embedding"],
                     "properties": {"object": {"const": "embedding"}, "index": {"type": "integer"},
                                    "embedding": {"anyOf": [{"type": "array", "items": {"type": "number"}},
                                                            {"type": "string", "contentEncoding": "base64"}]}}}},
            "usage": _ref("Usage"),
        },
    },
    "Model": {
        "type": "object", "required": ["id", "object", "created", "owned_by", "max_model_len"],
        "properties": {"id": {"type": "string"}, "object": {"const": "model"}, "created": {"type": "integer"},
                       "owned_by": {"type": "string"},
                       "max_model_len": {"type": "integer", "description": "Context length, in tokens."}},
    },
    "ModelList": {"type": "object", "required": ["object", "data"],
                  "properties": {"object": {"const": "list"}, "data": {"type": "array", "items": _ref("Model")}}},
    "ChatCompletionRequest": _request(
        "ChatCompletionRequest", "chat.completions", ["model", "messages"],
        "OpenAI's chat request, with Mistral's names (translated) and vLLM's sampling extras. Any other field is "
        "refused: `400 unrecognized_request_argument`."),
    "CompletionRequest": _request("CompletionRequest", "completions", ["model", "prompt"],
                                  "OpenAI's legacy completions request, with vLLM's sampling extras."),
    "EmbeddingRequest": _request("EmbeddingRequest", "embeddings", ["model", "input"],
                                 "OpenAI's embeddings request, with Mistral's names (translated)."),
}

# --- headers -----------------------------------------------------------------------------------------
_RATE_HEADERS = {
    f"x-ratelimit-{what}-{unit}": {"description": description.format(unit=unit), "schema": {"type": "string"}}
    for unit in ("requests", "tokens")
    for what, description in (("limit", "Your {unit} per minute, when a limit applies."),
                              ("remaining", "{unit} left in this minute."),
                              ("reset", "When the minute's {unit} reset, e.g. `12s`."))
}
_HEADERS: dict[str, Schema] = {
    "x-request-id": {"description": "Our id for the request, also its usage record's: quote it to support.",
                     "schema": {"type": "string", "examples": ["req_1f2e3d4c0000000000000001"]}},
    "x-wattle-overhead-ms": {"description": "Time spent in Wattle itself rather than waiting on the model.",
                             "schema": {"type": "string"}},
    **_RATE_HEADERS,
    "Retry-After": {"description": "Seconds to wait before retrying.", "schema": {"type": "string"}},
}
_PARAMETERS: dict[str, Schema] = {
    "Redact": {"name": "x-wattle-redact", "in": "header", "required": False,
               "description": "`true`: replace Australian identifiers (TFN, Medicare, card numbers, phone, email, "
                              "...) with placeholders before the prompt reaches the model, whatever the "
                              "organisation's setting. It can only add privacy.",
               "schema": {"type": "string", "enum": ["true", "1", "yes"]}},
    "CustomerId": {"name": "x-wattle-customer-id", "in": "header", "required": False,
                   "description": "Your end customer's id (an account number or CRM id, never a name or email) for "
                                  "the request's access record; takes precedence over the body's `user`. Never "
                                  "sent to the model or logged. Malformed: `400 invalid_customer_id`.",
                   "schema": {"type": "string", "pattern": CUSTOMER_ID_PATTERN}},
    "Traceparent": {"name": "traceparent", "in": "header", "required": False,
                    "description": "W3C trace context, passed on to the model server.", "schema": {"type": "string"}},
    "ModelId": {"name": "model", "in": "path", "required": True, "description": "A model id (may contain `/`).",
                "schema": {"type": "string"}},
}
_ERRORS: dict[int, str] = {
    400: "Malformed body, or an invalid or unknown field (`param` names it): `invalid_json`, "
         "`context_length_exceeded`, `unrecognized_request_argument`.",
    401: "No key, or an unknown, revoked or expired key: `invalid_api_key`.",
    402: "The organisation is suspended (`account_suspended`) or its payment is overdue (`payment_required`).",
    403: "The key lacks the `inference` scope (`insufficient_scope`) or may not use the model "
         "(`model_not_allowed`).",
    404: "No such model: `model_not_found`.",
    405: "Wrong method: `method_not_allowed`.",
    413: "Body over the size limit: `request_too_large`.",
    415: "Body is not `application/json`: `unsupported_media_type`.",
    429: "A rate limit (`rate_limit_exceeded`) or a quota (`insufficient_quota`): retry after `Retry-After`.",
    500: "Our error.",
    502: "The model server failed: `upstream_error`.",
    503: "No replica can take the request now: `service_unavailable`; retry after `Retry-After`.",
    504: "The model did not answer in time: `timeout`.",
}
_RETRY = {429, 503}


def _header_refs(*names: str) -> dict[str, Schema]:
    return {name: {"$ref": f"#/components/headers/{name}"} for name in names}


def _errors(*statuses: int) -> dict[str, Schema]:
    return {str(status): {"$ref": f"#/components/responses/Error{status}"} for status in statuses}


_GENERATION_ERRORS = (400, 401, 402, 403, 404, 405, 413, 415, 429, 500, 502, 503, 504)
_SUCCESS_HEADERS = ("x-request-id", "x-wattle-overhead-ms", *_RATE_HEADERS)


_SMALL = "mistralai/Mistral-7B-Instruct-v0.3"
_EXAMPLES: dict[str, dict[str, Schema]] = {
    "chat.completions": {
        "chat": {"summary": "A reply", "value": {
            "model": _SMALL, "max_tokens": 200,
            "messages": [{"role": "system", "content": "You are a helpful contact-centre agent."},
                         {"role": "user", "content": "G'day, where is my parcel?"}]}},
        "stream": {"summary": "Streamed, with usage at the end", "value": {
            "model": _SMALL, "stream": True, "stream_options": {"include_usage": True},
            "messages": [{"role": "user", "content": "G'day"}]}},
        "mistral": {"summary": "Mistral SDK names", "value": {
            "model": _SMALL, "random_seed": 7, "safe_prompt": True,
            "messages": [{"role": "user", "content": "G'day"}]}},
    },
    "completions": {"text": {"summary": "A completion", "value": {
        "model": _SMALL, "prompt": "The three best beaches in Sydney are", "max_tokens": 60}}},
    "embeddings": {"texts": {"summary": "Two texts", "value": {
        "model": "intfloat/e5-mistral-7b-instruct", "input": ["Where is my parcel?", "Track my delivery"]}}},
    # Without it Swagger UI's "Try it out" offers a body built from the schema, whose `conversation_id: "string"`
    # names no conversation (404): the example starts one, as a first turn must.
    "conversation": {"start": {"summary": "Start a WhatsApp conversation", "value": {
        "message": "G'day, my parcel hasn't arrived and I need it by Friday.", "model": _SMALL,
        "channel": "whatsapp", "customer_id": "acct-1234", "language": "en-AU"}}},
}


def _generation(endpoint: str, summary: str, request: str, answer: str, chunk: str | None) -> Schema:
    content: dict[str, Schema] = {"application/json": {"schema": _ref(answer)}}
    if chunk:
        # OpenAPI 3.1 cannot give an event stream's items a schema (3.2's ``itemSchema``): the description
        # names the chunk schema, which is in the components.
        content["text/event-stream"] = {"schema": {
            "type": "string", "description": f"With `stream: true`: server-sent events `data: <{chunk}>`, then "
                                            "`data: [DONE]`."}}
    return {"post": {
        "operationId": endpoint.replace(".", "_"), "summary": summary, "tags": ["Inference"],
        "parameters": [{"$ref": "#/components/parameters/Redact"}, {"$ref": "#/components/parameters/CustomerId"},
                       {"$ref": "#/components/parameters/Traceparent"}],
        "requestBody": {"required": True, "content": {"application/json": {
            "schema": _ref(request), **({"examples": _EXAMPLES[endpoint]} if endpoint in _EXAMPLES else {})}}},
        "responses": {"200": {"description": "The answer.", "headers": _header_refs(*_SUCCESS_HEADERS),
                              "content": content}, **_errors(*_GENERATION_ERRORS)},
    }}


def _generation_paths() -> dict[str, Schema]:
    return {
        "/v1/chat/completions": _generation("chat.completions", "Chat", "ChatCompletionRequest", "ChatCompletion",
                                            "ChatCompletionChunk"),
        "/v1/completions": _generation("completions", "Text completion", "CompletionRequest", "Completion",
                                       "Completion"),
        "/v1/embeddings": _generation("embeddings", "Embeddings", "EmbeddingRequest", "EmbeddingList", None),
    }


def _models_paths() -> dict[str, Schema]:
    ok = {"x-request-id": {"$ref": "#/components/headers/x-request-id"}}
    return {
        "/v1/models": {"get": {
            "operationId": "models_list", "summary": "The models your key may use", "tags": ["Models"],
            "responses": {"200": {"description": "Models, with their context length.", "headers": ok,
                                  "content": {"application/json": {"schema": _ref("ModelList")}}},
                          **_errors(401, 402, 403, 405, 500, 503)}}},
        "/v1/models/{model}": {"get": {
            "operationId": "models_retrieve", "summary": "One model", "tags": ["Models"],
            "parameters": [{"$ref": "#/components/parameters/ModelId"}],
            "responses": {"200": {"description": "The model.", "headers": ok,
                                  "content": {"application/json": {"schema": _ref("Model")}}},
                          **_errors(401, 402, 403, 404, 405, 500, 503)}}},
    }


def _self_paths() -> dict[str, Schema]:
    return {"/v1/openapi.json": {"get": {
        "operationId": "openapi", "summary": "This description", "tags": ["Meta"], "security": [],
        "responses": {"200": {"description": "OpenAPI 3.1, JSON.",
                              "content": {"application/json": {"schema": {"type": "object"}}}},
                      **_errors(405)}}}}


# --- conversations (inference.gateway.conversations, docs/conversations.md) ---------------------------------
_SENTIMENT = {"type": "object", "required": ["score", "label"], "properties": {
    "score": {"type": "number", "minimum": -1, "maximum": 1, "description": "-1 very negative, 1 very positive."},
    "label": {"type": "string", "enum": ["negative", "neutral", "positive"]}}}
_ESCALATION_REASON = {"type": "string", "enum": ["", "trigger_phrase", "negative_sentiment"]}
_SCHEMAS.update({
    "ConversationTurnRequest": {
        "type": "object", "additionalProperties": True, "required": ["message"],
        "description": "One customer turn. Without `conversation_id` it starts a conversation (then `model` is "
                       "required); `channel`, `language`, `customer_id` and `metadata` are set by the first turn "
                       "and may only be repeated unchanged.",
        "properties": {
            "message": {"type": "string", "minLength": 1, "maxLength": 8000, "description": "The customer's text."},
            "conversation_id": {"type": "string", "description": "Continue this conversation."},
            "model": {"type": "string", "description": "The chat model; a later turn may switch it."},
            "channel": {"type": "string", "enum": ["voice", "webchat", "whatsapp", "sms", "email"],
                        "default": "webchat"},
            "language": {"type": "string", "default": "en-AU", "description": "A BCP 47 tag such as en-AU."},
            "customer_id": {"type": "string", "pattern": "^[A-Za-z0-9._:@+\\-]{1,64}$",
                            "description": "Your id for the customer; never sent to the model."},
            "metadata": {"type": "object", "description": "Up to 2048 bytes of JSON, kept with the conversation."},
            "stream": {"type": "boolean", "default": False,
                       "description": "Server-sent events: the model's `chat.completion.chunk`s, then the "
                                      "`conversation.turn`, then `data: [DONE]`."},
        }},
    "ConversationTurn": {
        "type": "object",
        "required": ["id", "object", "conversation_id", "reply", "sentiment", "escalate", "usage"],
        "properties": {
            "id": {"type": "string", "description": "The turn's request id (its usage record)."},
            "object": {"const": "conversation.turn"}, "created": {"type": "integer"},
            "conversation_id": {"type": "string"}, "model": {"type": "string"}, "reply": {"type": "string"},
            "sentiment": _SENTIMENT,
            "escalate": {"type": "object", "required": ["flag", "reason"], "properties": {
                "flag": {"type": "boolean", "description": "Hand the conversation to a person (stays true)."},
                "reason": _ESCALATION_REASON}},
            "usage": {"type": "object", "properties": {"prompt_tokens": {"type": "integer"},
                                                       "completion_tokens": {"type": "integer"},
                                                       "total_tokens": {"type": "integer"}}},
        }},
    "Conversation": {
        "type": "object", "required": ["id", "object", "status", "turns", "sentiment_trail", "escalation"],
        "properties": {
            "id": {"type": "string"}, "object": {"const": "conversation"},
            "status": {"type": "string", "enum": ["open", "closed"]}, "model": {"type": "string"},
            "channel": {"type": "string"}, "language": {"type": "string"},
            "customer_id": {"type": ["string", "null"]}, "created": {"type": "number"},
            "updated": {"type": "number"}, "closed_at": {"type": ["number", "null"]},
            "metadata": {"type": "object"},
            "turns": {"type": "array", "items": {"type": "object", "properties": {
                "role": {"type": "string", "enum": ["user", "assistant"]},
                "text": {"type": ["string", "null"], "description": "As stored (redacted where redaction was on); "
                                                                    "null once closed."},
                "created": {"type": "number"}, "sentiment": _SENTIMENT}}},
            "sentiment_trail": {"type": "array", "items": {"type": "number"}},
            "escalation": {"type": "object", "properties": {
                "flag": {"type": "boolean"}, "reason": _ESCALATION_REASON, "detail": {"type": "string"},
                "turn": {"type": ["integer", "null"]}, "at": {"type": ["number", "null"]}}},
        }},
})
_PARAMETERS["ConversationId"] = {"name": "conversation_id", "in": "path", "required": True,
                                 "schema": {"type": "string"}, "description": "The id a turn returned."}
_ERRORS[409] = ("The conversation is closed (`conversation_closed`) or another turn of it held it too long "
                "(`conversation_busy`).")


def _conversation_paths() -> dict[str, Schema]:
    ok = {"x-request-id": {"$ref": "#/components/headers/x-request-id"}}
    one = {"$ref": "#/components/parameters/ConversationId"}
    turn = _generation("conversation", "One customer turn: reply, sentiment, escalation", "ConversationTurnRequest",
                       "ConversationTurn", "ConversationTurn")
    turn["post"]["tags"] = ["Conversations"]
    turn["post"]["responses"]["200"]["content"]["text/event-stream"]["schema"]["description"] = (
        "With `stream: true`: server-sent events `data: <ChatCompletionChunk>` as the model writes, then one "
        "`data: <ConversationTurn>` (reply, sentiment, escalation, usage), then `data: [DONE]`.")
    turn["post"]["responses"]["200"]["headers"]["x-wattle-conversation-id"] = {
        "description": "The conversation's id (also in the body).", "schema": {"type": "string"}}
    turn["post"]["responses"].update(_errors(409))
    return {
        "/v1/conversation": turn,
        "/v1/conversations/{conversation_id}": {"get": {
            "operationId": "conversations_retrieve", "summary": "A conversation: turns, sentiment, escalation",
            "tags": ["Conversations"], "parameters": [one],
            "responses": {"200": {"description": "The conversation.", "headers": ok,
                                  "content": {"application/json": {"schema": _ref("Conversation")}}},
                          **_errors(401, 402, 403, 404, 405, 500)}}},
        "/v1/conversations/{conversation_id}/close": {"post": {
            "operationId": "conversations_close", "summary": "Close a conversation", "tags": ["Conversations"],
            "parameters": [one],
            "responses": {"200": {"description": "The closed conversation (its text is no longer kept here).",
                                  "headers": ok,
                                  "content": {"application/json": {"schema": _ref("Conversation")}}},
                          **_errors(401, 402, 403, 404, 405, 409, 500)}}},
    }


# Each returns path items; the document is their union.
SECTIONS: list[Callable[[], dict[str, Schema]]] = [_generation_paths, _models_paths, _conversation_paths,
                                                   _self_paths]


def document() -> dict[str, Any]:
    base = settings.WATTLE_BASE_URL.rstrip("/")
    paths: dict[str, Schema] = {}
    for section in SECTIONS:
        paths.update(section())
    responses = {
        f"Error{status}": {
            "description": text,
            "content": {"application/json": {"schema": _ref("Error")}},
            **({"headers": _header_refs("Retry-After", "x-request-id")} if status in _RETRY
               else {"headers": _header_refs("x-request-id")}),
        } for status, text in _ERRORS.items()
    }
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "Wattle inference API",
            "version": "1",
            "summary": "OpenAI-compatible chat, completions, embeddings and models, and contact-centre "
                       "conversations, served from Sydney.",
            "description": (
                "OpenAI's API shapes, served by Mistral models on vLLM in AWS Sydney (ap-southeast-2). Use the "
                "OpenAI or the Mistral SDK with the base URL below (plus `/v1` for OpenAI's) and a key from the "
                "console. Errors have OpenAI's shape. The management API (keys, team, usage) is described "
                f"separately at {base}/api/schema/."),
        },
        # First the server this document came from (a relative URL resolves against the document's own): the docs
        # page's "Try it out" calls the host it was opened on, which its CSP (`connect-src 'self'`) allows, even
        # when that is not WATTLE_BASE_URL's (another host name, `localhost` for `127.0.0.1`).
        "servers": [{"url": "/", "description": "This server"}, {"url": base, "description": "Wattle, Sydney"}],
        "security": [{"bearer": []}],
        "tags": [{"name": "Inference"}, {"name": "Models"}, {"name": "Conversations"}, {"name": "Meta"}],
        "paths": paths,
        "components": {
            "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer", "bearerFormat": "wtl_<id>_<secret>",
                                           "description": "An API key with the `inference` scope."}},
            "schemas": _SCHEMAS,
            "parameters": _PARAMETERS,
            "headers": _HEADERS,
            "responses": responses,
        },
    }


@functools.cache
def document_bytes() -> bytes:
    """The document as served (built once per process; the tests clear the cache when settings change)."""
    return orjson.dumps(document())
