"""Properties of the `/v1` data plane over generated requests (Hypothesis), against the real gateway and the
simulator: whatever a client sends gets a 2xx or an OpenAI-shaped 4xx, never a 5xx; and no request can use
more tokens than admission reserved for it."""

from __future__ import annotations

import asyncio
import json
from urllib.parse import quote

import httpx
import orjson
import pytest
from hypothesis import HealthCheck, assume, event, example, given, settings
from hypothesis import strategies as st

from billing import services
from inference import tokens
from inference.gateway import validation
from tests.conftest import wait_for

MODEL = "mistralai/Mistral-7B-Instruct-v0.3"
EMBED = "intfloat/e5-mistral-7b-instruct"
MAX_MODEL_LEN = 32768  # the simulator's
PROPERTY = settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])

# --- generated requests --------------------------------------------------------------------------------------
def mostly(good, bad):
    """``good`` at least four times in five (Hypothesis favours small draws), else ``bad``: enough valid
    requests reach the model, and every part of a body still gets its share of garbage."""
    return st.integers(0, 4).flatmap(lambda i: good if i < 4 else bad)


WORDS = st.sampled_from(["word", "Kia", "ora", "café", "—", "\"", "{", "1e308", "/echo", "\n", "🦘", "[INST]"])
TEXT = st.lists(WORDS, min_size=1, max_size=12).map(" ".join)
SCALARS = (
    st.none() | st.booleans() | st.integers(min_value=-(2**70), max_value=2**70)
    | st.floats(allow_nan=False, allow_infinity=False) | TEXT | st.text(max_size=8)
)
JSON = st.recursive(SCALARS, lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=6), inner,
                                                                                          max_size=3), max_leaves=8)
MESSAGE = st.fixed_dictionaries(
    {"role": mostly(st.sampled_from(["user", "assistant", "system"]), st.sampled_from(["tool", "developer", "robot"])),
     "content": mostly(TEXT | st.lists(st.fixed_dictionaries({"type": st.just("text"), "text": TEXT}), max_size=2),
                       st.none() | JSON)},
    optional={"tool_call_id": st.text(max_size=12), "tool_calls": JSON, "name": TEXT},
)
# Values that pass validation often enough for the simulator to see many requests, and anything at all.
NUMBERS = {name: mostly(good, JSON) for name, good in {
    "temperature": st.floats(min_value=-0.2, max_value=2.2) | st.just(1e308),
    "top_p": st.floats(min_value=-0.2, max_value=1.2),
    "max_tokens": st.integers(min_value=-1, max_value=40) | st.sampled_from(["10", 10**12, 2**70, 1e20, 10.0]),
    "max_completion_tokens": st.integers(min_value=-1, max_value=40) | st.sampled_from(["5", 10**12, True]),
    "n": st.integers(min_value=0, max_value=9) | st.sampled_from(["2", 100_000, 2.0]),
    "stream": st.booleans(),
    "stream_options": st.fixed_dictionaries({}, optional={"include_usage": st.booleans()}),
    "seed": st.integers(min_value=-(2**64), max_value=2**64),
    "stop": st.lists(TEXT, max_size=2) | TEXT,
    "top_k": st.integers(min_value=-2, max_value=50),
    "min_tokens": st.integers(min_value=-1, max_value=20),
    "logit_bias": st.dictionaries(st.sampled_from(["1", "2", "x"]), st.floats(-200, 200), max_size=2),
    "user": TEXT,
}.items()}
OTHERS = mostly(st.just({}), st.dictionaries(
    st.sampled_from(["priority", "cache_salt", "ignore_eos", "chat_template", "tools", "tool_choice", "logprobs",
                     "top_logprobs", "response_format", "echo", "suffix", "dimensions", "encoding_format",
                     "random_seed", "safe_prompt", "structured_outputs", "presence_penalty", "zzz"]),
    JSON, min_size=1, max_size=3,
))
TEXTS = st.lists(TEXT, min_size=1, max_size=3)
TOKEN_IDS = st.lists(st.integers(0, 40000), min_size=1, max_size=5)
CORE = {
    "chat.completions": {"messages": mostly(st.lists(MESSAGE, min_size=1, max_size=3), JSON)},
    "completions": {"prompt": mostly(TEXT | TEXTS | TOKEN_IDS | st.lists(TOKEN_IDS, max_size=2), JSON)},
    "embeddings": {"input": mostly(TEXT | TEXTS | TOKEN_IDS, JSON)},
}
PATHS = {"chat.completions": "/v1/chat/completions", "completions": "/v1/completions", "embeddings": "/v1/embeddings"}


def bodies(endpoint: str):
    model = mostly(st.just(EMBED if endpoint == "embeddings" else MODEL), st.sampled_from([MODEL, EMBED, "gpt-4o",
                                                                                          ""]) | JSON)
    allowed = validation.ALLOWED_FIELDS[endpoint]
    fields = st.fixed_dictionaries({"model": model, **CORE[endpoint]},
                                   optional={name: value for name, value in NUMBERS.items() if name in allowed})
    as_json = st.tuples(fields, OTHERS).map(lambda pair: json.dumps({**pair[1], **pair[0]}).encode())
    broken = st.sampled_from([
        b"", b"[]", b"null", b'{"model": ', b'{"model": "%s", "messages": [], "temperature": NaN}' % MODEL.encode(),
        b'{"model": "%s", "prompt": "x", "temperature": Infinity}' % MODEL.encode(), b"\xff\xfe",
        b'{"model": "%s", "prompt": "x", "max_tokens": 1e400}' % MODEL.encode(),
    ])
    return mostly(as_json, broken)


HEADERS = st.fixed_dictionaries({}, optional={
    "traceparent": st.text(st.characters(min_codepoint=32, max_codepoint=126), max_size=80).map(str.strip)
    | st.just("00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"),
    "x-request-id": st.text(st.characters(min_codepoint=32, max_codepoint=126), max_size=80).map(str.strip),
    "content-type": mostly(st.just("application/json"), st.sampled_from(["text/plain", "application/x-json"])),
})


def assert_openai_answer(response: httpx.Response) -> None:
    event(f"HTTP {response.status_code}")  # --hypothesis-show-statistics: how many reached the model
    assert response.status_code < 500, response.text
    if response.status_code >= 400:
        error = response.json()["error"]
        assert set(error) == {"message", "type", "param", "code"} and isinstance(error["message"], str)
        assert "Traceback" not in response.text
    elif response.headers["content-type"].startswith("application/json"):
        response.json()
    else:
        assert response.text.endswith("data: [DONE]\n\n")


@pytest.fixture
def roomy_key(gateway_ready, acme, issue_key, django_capture_on_commit_callbacks):
    """A key whose limits a few hundred requests won't reach (a limit's 429 would be a fine answer, but would
    stop the generated requests from reaching the model)."""
    key = issue_key(acme)
    with django_capture_on_commit_callbacks(execute=True):
        services.tenant_quota_set(tenant=acme, rpm_limit=10**6, tpm_limit=10**9, max_concurrent=1000,
                                  monthly_token_budget=10**12)
    probe = {"model": MODEL, "messages": [{"role": "user", "content": "Hi"}], "max_tokens": 1}
    wait_for(lambda: httpx.post(f"{gateway_ready.base_url}/v1/chat/completions", json=probe,
                                headers={"Authorization": f"Bearer {key}"}).headers.get(
        "x-ratelimit-limit-requests") == str(10**6), timeout=5)
    return key


def _body(endpoint: str, **fields) -> bytes:
    core = {"chat.completions": {"messages": [{"role": "user", "content": "Hi"}]}, "completions": {"prompt": "Hi"},
            "embeddings": {"input": "Hi"}}[endpoint]
    return json.dumps({"model": EMBED if endpoint == "embeddings" else MODEL, **core, **fields}).encode()


# The probes that once answered 500 or 502, always tried first.
KNOWN_PROBES = {
    "chat.completions": [{"max_tokens": "10"}, {"max_completion_tokens": "5"}, {"n": 100_000}, {"max_tokens": 10**12},
                         {"temperature": 1e308}, {"priority": 1}, {"min_tokens": "3"}],
    "completions": [{"prompt": []}, {"prompt": [[]]}, {"max_tokens": "10"}, {"prompt": ["a", "b"], "n": 9}],
    "embeddings": [{"input": []}, {"input": [[]]}, {"cache_salt": "x"}],
}


@pytest.mark.django_db(transaction=True)
@pytest.mark.parametrize("endpoint", sorted(PATHS))
def test_any_body_gets_a_2xx_or_an_openai_shaped_4xx(endpoint, gateway_ready, roomy_key):
    with httpx.Client(base_url=gateway_ready.base_url, timeout=30) as client:
        def check(body, headers):
            assert_openai_answer(client.post(
                PATHS[endpoint], content=body, headers={"Authorization": f"Bearer {roomy_key}", **headers}
            ))

        for probe in KNOWN_PROBES[endpoint]:
            check = example(body=_body(endpoint, **probe), headers={})(check)
        PROPERTY(given(body=bodies(endpoint), headers=HEADERS)(check))()


@pytest.mark.django_db(transaction=True)
def test_any_models_path_gets_a_2xx_or_an_openai_shaped_4xx(gateway_ready, roomy_key):
    with httpx.Client(base_url=gateway_ready.base_url, timeout=30) as client:
        @PROPERTY
        @given(name=st.text(max_size=40) | st.sampled_from([MODEL, EMBED, "x" * 5000]), method=st.sampled_from(
            ["GET", "POST", "DELETE"]))
        def check(name, method):
            path = "/v1/models" if not name else f"/v1/models/{quote(name, safe='/')}"
            response = client.request(method, path, headers={"Authorization": f"Bearer {roomy_key}"})
            assert_openai_answer(response)
            assert len(response.content) < 10_000

        check()


# --- reservations cover what vLLM bills ----------------------------------------------------------------------
ECHO_TEXT = st.integers(min_value=0, max_value=300).map(lambda n: "/echo " + "word " * n)
# Conversations ending with a user turn, as vLLM renders them for a reply, that Mistral's tokenizer accepts (the
# test assumes that below). vLLM refuses the others with a 400 (its Mistral path renders with mistral-common);
# the simulator instead bills them with a JSON-based over-estimate, which is no measure of a reservation.
CHAT_SHAPES = st.fixed_dictionaries(
    {"model": st.just(MODEL),
     "messages": st.tuples(st.lists(st.fixed_dictionaries({"role": st.sampled_from(["user", "assistant", "system"]),
                                                            "content": TEXT.filter(bool)}), max_size=2), ECHO_TEXT)
     .map(lambda pair: [*pair[0], {"role": "user", "content": pair[1]}])},
    optional={"n": st.integers(1, 3), "max_tokens": st.integers(1, 400), "max_completion_tokens": st.integers(1, 400),
              "stream": st.booleans(), "stop": st.sampled_from(["\n", "word word word"])},
)
COMPLETION_SHAPES = st.fixed_dictionaries(
    {"model": st.just(MODEL),
     "prompt": ECHO_TEXT | st.lists(ECHO_TEXT, min_size=1, max_size=3)
     | st.lists(st.lists(st.integers(1, 32000), min_size=1, max_size=40), min_size=1, max_size=3)},
    optional={"n": st.integers(1, 3), "max_tokens": st.integers(1, 400), "stream": st.booleans(),
              "echo": st.booleans()},
)


def billed_usage(client: httpx.Client, path: str, body: bytes, stream: bool) -> dict:
    response = client.post(path, content=body, headers={"content-type": "application/json"})
    assert response.status_code == 200, response.text
    if not stream:
        return response.json()["usage"]
    [usage_event] = [line for line in response.text.split("\n\n") if '"choices":[]' in line]
    return orjson.loads(usage_event.removeprefix("data: "))["usage"]


@settings(derandomize=True, max_examples=150, deadline=None)
@given(shape=st.one_of(st.tuples(st.just("chat.completions"), CHAT_SHAPES),
                       st.tuples(st.just("completions"), COMPLETION_SHAPES)))
def test_no_request_can_use_more_tokens_than_it_reserved(simulator, shape):
    """Prepared as the gateway prepares it (a small default cap, so requests without max_tokens would run past
    it), sent to the simulator as the gateway sends it, billed by the simulator as vLLM bills."""
    endpoint, request = shape
    if endpoint == "chat.completions":
        try:
            tokens.encode_chat_prompt(MODEL, request["messages"])
        except Exception:  # mistral-common raises many types for a conversation it refuses
            assume(False)
    if request.get("stream"):
        request["stream_options"] = {"include_usage": True}  # what the gateway always asks upstream for
    body = orjson.dumps(request)
    prepared = validation.PREPARERS[endpoint](orjson.loads(body), validation.Rules(max_n=8, default_max_tokens=64))
    asyncio.run(validation.check_context_length(endpoint, MODEL, prepared, MAX_MODEL_LEN))
    prompt_reserved, completion_reserved = validation.reservation(prepared, MAX_MODEL_LEN)
    upstream = validation.upstream_body(body, prepared, cache_salt="tenant-salt")
    with httpx.Client(base_url=simulator.base_url, timeout=30) as client:
        usage = billed_usage(client, PATHS[endpoint], upstream, prepared.stream)
    assert usage["prompt_tokens"] <= prompt_reserved
    assert usage["completion_tokens"] <= completion_reserved
