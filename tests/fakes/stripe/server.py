"""The stand-in's HTTP side: Stripe's API under ``/v1``, hosted pages, ``/_fake`` controls, webhook delivery.

The layers a request goes through, in order: faults injected by a test (a 500, or a hang), the API key, the
``Idempotency-Key`` replay, then the operation itself under the state's lock.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import queue
import re
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qsl, urlsplit

from tests.fakes.stripe import pages
from tests.fakes.stripe.forms import FormError, as_bool, decode
from tests.fakes.stripe.state import ApiError, StripeState, invalid, new_id

DEFAULT_API_KEY = "sk_test_wattle_stand_in"
DEFAULT_WEBHOOK_SECRET = "whsec_wattle_stand_in"


@dataclass
class Fault:
    path_prefix: str
    remaining: int
    status: int = 500
    hang_s: float = 0.0
    then: str = "process"  # after a hang: "process" the request (Stripe did it, the answer was lost) or "drop" it


def sign(payload: bytes, secret: str, timestamp: int | None = None) -> str:
    """Stripe's ``Stripe-Signature`` header: ``t=<unix>,v1=<HMAC-SHA256 of "t.payload" keyed by the secret>``."""
    timestamp = int(time.time()) if timestamp is None else int(timestamp)
    digest = hmac.new(secret.encode(), f"{timestamp}.".encode() + payload, hashlib.sha256).hexdigest()
    return f"t={timestamp},v1={digest}"


def _api_key(authorization: str) -> str:
    """The secret key from ``Bearer sk_…`` (the SDK) or ``Basic base64(sk_…:)`` (``curl -u sk_…:``, as Stripe's
    own examples do)."""
    scheme, _, value = authorization.strip().partition(" ")
    if scheme.lower() == "bearer":
        return value.strip()
    if scheme.lower() == "basic":
        try:
            return base64.b64decode(value.strip()).decode().partition(":")[0]
        except (ValueError, UnicodeDecodeError):
            return ""
    return ""


def _page(items: list[dict], params: dict, url: str) -> dict[str, Any]:
    try:
        limit = int(params.get("limit") or 10)
    except ValueError:
        raise invalid("Invalid integer: limit", "limit") from None
    if not 1 <= limit <= 100:
        raise invalid("limit must be between 1 and 100.", "limit")
    ids = [item.get("id") for item in items]
    if params.get("starting_after"):
        if params["starting_after"] not in ids:
            raise invalid(f"Invalid starting_after: {params['starting_after']}", "starting_after")
        items = items[ids.index(params["starting_after"]) + 1 :]
    elif params.get("ending_before"):
        if params["ending_before"] not in ids:
            raise invalid(f"Invalid ending_before: {params['ending_before']}", "ending_before")
        items = items[: ids.index(params["ending_before"])][-limit:]
    return {"object": "list", "data": items[:limit], "has_more": len(items) > limit, "url": url}


class StripeFake:
    """A Stripe stand-in on a loopback port, for the real SDK. Use as a context manager, or ``start()``/``stop()``.

    Tests drive time and payments with the methods below (the same as the ``/_fake`` control endpoints), read
    ``events`` (every event, oldest first) and ``requests`` (every API request's method, path and parameters), and
    sign events with ``signed()`` to post them to the webhook view themselves.
    """

    def __init__(
        self,
        *,
        api_key: str | None = DEFAULT_API_KEY,
        webhook_secret: str = DEFAULT_WEBHOOK_SECRET,
        webhook_url: str | None = None,
        host: str = "127.0.0.1",
        port: int = 0,
    ) -> None:
        self.api_key = api_key  # None: any sk_test_ key is accepted (for `make run`)
        self.webhook_secret = webhook_secret
        self.webhook_url = webhook_url
        self.state = StripeState()
        self.requests: list[dict[str, Any]] = []
        self.deliveries: list[dict[str, Any]] = []
        self._faults: list[Fault] = []
        self._idempotent: dict[str, tuple[str, str, dict, int, bytes]] = {}
        self._stopping = threading.Event()
        self._outbox: queue.Queue[dict | None] = queue.Queue()
        self._server = ThreadingHTTPServer((host, port), _Handler)
        self._server.daemon_threads = True
        self._server.fake = self  # type: ignore[attr-defined]
        self.port = self._server.server_address[1]
        self.base_url = f"http://{host}:{self.port}"
        self.state.base_url = self.base_url
        self.state.on_event = self._queue_delivery
        self._threads: list[threading.Thread] = []

    # --- lifecycle ------------------------------------------------------------------------------------------------
    def start(self) -> StripeFake:
        serve = threading.Thread(
            target=self._server.serve_forever, kwargs={"poll_interval": 0.05}, name="stripe-fake", daemon=True
        )
        deliver = threading.Thread(target=self._deliver_loop, name="stripe-fake-webhooks", daemon=True)
        self._threads = [serve, deliver]
        for thread in self._threads:
            thread.start()
        return self

    def stop(self) -> None:
        self._stopping.set()  # ends injected hangs at once
        self._outbox.put(None)
        self._server.shutdown()
        self._server.server_close()
        for thread in self._threads:
            thread.join(timeout=5)

    def __enter__(self) -> StripeFake:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # --- what tests read ------------------------------------------------------------------------------------------
    @property
    def events(self) -> list[dict[str, Any]]:
        with self.state.lock:
            return list(self.state.events)

    def events_of(self, type_: str) -> list[dict[str, Any]]:
        return [e for e in self.events if e["type"] == type_]

    def signed(
        self, event: dict[str, Any], *, timestamp: int | None = None, secret: str | None = None
    ) -> tuple[bytes, str]:
        """The event as Stripe would POST it: (body, ``Stripe-Signature`` header)."""
        payload = json.dumps(event).encode()
        return payload, sign(payload, secret or self.webhook_secret, timestamp)

    def meter_totals(self) -> dict[tuple[str, str, int], int]:
        """(customer id, event name, hour start) -> units held, after Stripe's own de-duplication."""
        with self.state.lock:
            return self.state.meter_totals()

    def url(self, path: str) -> str:
        return self.base_url + path

    # --- faults ---------------------------------------------------------------------------------------------------
    def fail_next(self, path_prefix: str, *, count: int = 1, status: int = 500) -> None:
        """The next ``count`` requests whose path starts with ``path_prefix`` answer ``status`` without effect."""
        with self.state.lock:
            self._faults.append(Fault(path_prefix, count, status=status))

    def hang_next(self, path_prefix: str, *, count: int = 1, seconds: float = 5.0, then: str = "process") -> None:
        """The next ``count`` matching requests wait ``seconds`` first; then they are carried out (``process``: the
        client timed out but Stripe did it) or dropped without an answer (``drop``)."""
        if then not in ("process", "drop"):
            raise ValueError("then is 'process' or 'drop'")
        with self.state.lock:
            self._faults.append(Fault(path_prefix, count, hang_s=seconds, then=then))

    def _take_fault(self, path: str) -> Fault | None:
        with self.state.lock:
            for fault in self._faults:
                if path.startswith(fault.path_prefix) and fault.remaining > 0:
                    fault.remaining -= 1
                    if fault.remaining == 0:
                        self._faults.remove(fault)
                    return fault
        return None

    # --- state transitions (also under /_fake) ------------------------------------------------------------------------
    def _locked(self, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        with self.state.lock:
            return fn(*args, **kwargs)

    def complete_checkout(self, session_id: str, **details: Any) -> dict:
        """Pay (or start the trial) on the hosted Checkout page; returns the subscription."""
        return self._locked(self.state.checkout_complete, session_id, **details)

    def advance(self, subscription_id: str) -> dict | None:
        """Close the current period now: invoice the fee and the period's metered usage, and collect it."""
        return self._locked(self.state.subscription_advance, subscription_id)

    def end_trial(self, subscription_id: str) -> dict | None:
        return self._locked(self.state.trial_end, subscription_id)

    def pay(self, invoice_id: str) -> dict:
        """The customer pays an open invoice with a working card."""
        return self._locked(self.state.invoice_pay, invoice_id)

    def cancel(self, subscription_id: str) -> dict:
        return self._locked(self.state.subscription_cancel, subscription_id)

    def set_card_declines(self, customer_id: str, declines: bool = True) -> None:
        self._locked(self.state.set_card_declines, customer_id, declines)

    def set_tax_id(self, customer_id: str, value: str, type_: str = "au_abn") -> dict:
        return self._locked(self.state.tax_id_set, customer_id, type_, value)

    # --- webhooks -------------------------------------------------------------------------------------------------
    def _queue_delivery(self, event: dict) -> None:
        if self.webhook_url:
            self._outbox.put(event)

    def _deliver_loop(self) -> None:
        while True:
            event = self._outbox.get()
            try:
                if event is None or self._stopping.is_set():
                    return
                self._deliver(event)
            finally:
                self._outbox.task_done()

    def _deliver(self, event: dict) -> None:
        payload, header = self.signed(event)
        status: int | str = "not sent"
        for delay in (0.0, 0.2, 0.5, 1.0):
            if self._stopping.wait(delay):
                return
            request = urllib.request.Request(
                self.webhook_url or "",
                data=payload,
                method="POST",
                headers={
                    "Content-Type": "application/json; charset=utf-8",
                    "Stripe-Signature": header,
                    "User-Agent": "Stripe/1.0 (+https://stripe.com/docs/webhooks)",
                },
            )
            try:
                with urllib.request.urlopen(request, timeout=10) as response:
                    status = response.status
            except urllib.error.HTTPError as exc:
                status = exc.code
            except OSError as exc:
                status = f"error: {exc}"
            if isinstance(status, int) and 200 <= status < 300:
                break
        with self.state.lock:
            self.deliveries.append({"event": event["id"], "type": event["type"], "status": status})

    def wait_for_deliveries(self, timeout: float = 10.0) -> None:
        """Block until every event so far has been posted to the webhook URL (or given up on)."""
        deadline = time.monotonic() + timeout
        while self._outbox.unfinished_tasks:
            if time.monotonic() > deadline:
                raise TimeoutError("webhook deliveries still pending")
            time.sleep(0.01)

    # --- API dispatch ---------------------------------------------------------------------------------------------
    def api(self, method: str, path: str, params: dict, headers: dict[str, str]) -> tuple[int, bytes, dict[str, str]]:
        """Answer one ``/v1`` request: (status, JSON body, extra headers)."""
        key = _api_key(headers.get("authorization") or "")
        if not key:
            raise ApiError(
                401,
                "You did not provide an API key. You need to provide your API key in the Authorization header, "
                "using Bearer auth (e.g. 'Authorization: Bearer YOUR_SECRET_KEY').",
            )
        if not key.startswith("sk_test_") or (self.api_key is not None and key != self.api_key):
            raise ApiError(401, f"Invalid API Key provided: {key[:8]}****{key[-4:]}")
        idempotency_key = headers.get("idempotency-key") if method == "POST" else None
        with self.state.lock:
            if idempotency_key:
                stored = self._idempotent.get(idempotency_key)
                if stored is not None:
                    s_method, s_path, s_params, s_status, s_body = stored
                    if (s_method, s_path, s_params) != (method, path, params):
                        raise ApiError(
                            400,
                            "Keys for idempotent requests can only be used with the same parameters they were first "
                            f"used with. Try using a key other than '{idempotency_key}' if you meant to execute a "
                            "different request.",
                            type="idempotency_error",
                        )
                    return s_status, s_body, {"Idempotent-Replayed": "true", "Idempotency-Key": idempotency_key}
            result = self._route(method, path, params)
            body = json.dumps(result).encode()
            if idempotency_key:
                # Stripe keeps the result of a request it carried out; 4xx validation failures are not kept.
                self._idempotent[idempotency_key] = (method, path, params, 200, body)
        extra = {"Idempotency-Key": idempotency_key} if idempotency_key else {}
        return 200, body, extra

    def _route(self, method: str, path: str, params: dict) -> dict:
        s = self.state
        expand = params.get("expand") or []
        for route_method, pattern, handler in _ROUTES:
            if route_method != method:
                continue
            match = pattern.fullmatch(path)
            if match:
                return handler(self, s, match, params, expand)
        raise ApiError(404, f"Unrecognized request URL ({method}: {path}).")


def _list(items: list[dict], params: dict, path: str, view: Callable[[dict], dict] | None = None) -> dict:
    page = _page(items, params, path)
    if view is not None:
        page["data"] = [view(item) for item in page["data"]]
    return page


_Route = tuple[str, re.Pattern[str], Callable[..., dict]]
_ID = r"([A-Za-z0-9_]+)"
_ROUTES: list[_Route] = [
    ("POST", re.compile(r"/v1/customers"), lambda f, s, m, p, e: s.customer_create(p)),
    ("GET", re.compile(rf"/v1/customers/{_ID}"), lambda f, s, m, p, e: s.customer(m[1])),
    ("POST", re.compile(rf"/v1/customers/{_ID}"), lambda f, s, m, p, e: s.customer_update(m[1], p)),
    ("POST", re.compile(rf"/v1/customers/{_ID}/tax_ids"), lambda f, s, m, p, e: s.tax_id_create(m[1], p)),
    (
        "GET",
        re.compile(rf"/v1/customers/{_ID}/tax_ids"),
        lambda f, s, m, p, e: _list(s.tax_id_list(m[1]), p, f"/v1/customers/{m[1]}/tax_ids"),
    ),
    ("POST", re.compile(r"/v1/products"), lambda f, s, m, p, e: s.product_create(p)),
    ("GET", re.compile(rf"/v1/products/{_ID}"), lambda f, s, m, p, e: s.product(m[1])),
    ("POST", re.compile(rf"/v1/products/{_ID}"), lambda f, s, m, p, e: s.product_update(m[1], p)),
    ("POST", re.compile(r"/v1/prices"), lambda f, s, m, p, e: s.price_view(s.price_create(p), e)),
    (
        "GET",
        re.compile(r"/v1/prices"),
        lambda f, s, m, p, e: _list(s.price_list(p), p, "/v1/prices", lambda x: s.price_view(x, e)),
    ),
    ("GET", re.compile(rf"/v1/prices/{_ID}"), lambda f, s, m, p, e: s.price_view(s.price(m[1]), e)),
    ("POST", re.compile(rf"/v1/prices/{_ID}"), lambda f, s, m, p, e: s.price_view(s.price_update(m[1], p), e)),
    ("POST", re.compile(r"/v1/billing/meters"), lambda f, s, m, p, e: s.meter_create(p)),
    ("GET", re.compile(r"/v1/billing/meters"), lambda f, s, m, p, e: _list(s.meter_list(p), p, "/v1/billing/meters")),
    ("GET", re.compile(rf"/v1/billing/meters/{_ID}"), lambda f, s, m, p, e: s.meter(m[1])),
    (
        "GET",
        re.compile(rf"/v1/billing/meters/{_ID}/event_summaries"),
        lambda f, s, m, p, e: _list(s.meter_event_summaries(m[1], p), p, f"/v1/billing/meters/{m[1]}/event_summaries"),
    ),
    ("POST", re.compile(r"/v1/billing/meter_events"), lambda f, s, m, p, e: s.meter_event_create(p)),
    ("POST", re.compile(r"/v1/checkout/sessions"), lambda f, s, m, p, e: s.checkout_session_create(p)),
    ("GET", re.compile(rf"/v1/checkout/sessions/{_ID}"), lambda f, s, m, p, e: s.checkout_session(m[1])),
    ("POST", re.compile(rf"/v1/checkout/sessions/{_ID}/expire"),
     lambda f, s, m, p, e: s.checkout_session_expire(m[1])),
    (
        "GET",
        re.compile(rf"/v1/checkout/sessions/{_ID}/line_items"),
        lambda f, s, m, p, e: _list(
            [
                {
                    "id": f"li_{i}_{m[1][-12:]}",
                    "object": "item",
                    "description": line["product"]["name"],
                    "price": line["price"],
                    "quantity": line["quantity"],
                    "currency": line["price"]["currency"],
                }
                for i, line in enumerate(s.checkout_lines(m[1]))
            ],
            p,
            f"/v1/checkout/sessions/{m[1]}/line_items",
        ),
    ),
    ("POST", re.compile(r"/v1/billing_portal/sessions"), lambda f, s, m, p, e: s.portal_session_create(p)),
    ("GET", re.compile(rf"/v1/subscriptions/{_ID}"), lambda f, s, m, p, e: s.subscription_view(s.subscription(m[1]))),
    ("POST", re.compile(r"/v1/subscription_items"), lambda f, s, m, p, e: s.subscription_item_create(p)),
    (
        "GET",
        re.compile(r"/v1/subscription_items"),
        lambda f, s, m, p, e: _list(s.subscription_items(p), p, "/v1/subscription_items"),
    ),
    (
        "POST",
        re.compile(rf"/v1/subscriptions/{_ID}"),
        lambda f, s, m, p, e: s.subscription_view(s.subscription_update(m[1], p)),
    ),
    (
        "DELETE",
        re.compile(rf"/v1/subscriptions/{_ID}"),
        lambda f, s, m, p, e: s.subscription_view(s.subscription_cancel(m[1])),
    ),
    (
        "GET",
        re.compile(r"/v1/subscriptions"),
        lambda f, s, m, p, e: _list(s.subscription_list(p), p, "/v1/subscriptions", s.subscription_view),
    ),
    (
        "GET",
        re.compile(r"/v1/invoices"),
        lambda f, s, m, p, e: _list(s.invoice_list(p), p, "/v1/invoices", s.invoice_view),
    ),
    ("GET", re.compile(rf"/v1/invoices/{_ID}"), lambda f, s, m, p, e: s.invoice_view(s.invoice(m[1]))),
    (
        "GET",
        re.compile(rf"/v1/invoices/{_ID}/lines"),
        lambda f, s, m, p, e: _list(s.invoice_lines(m[1]), p, f"/v1/invoices/{m[1]}/lines"),
    ),
    ("GET", re.compile(r"/v1/events"), lambda f, s, m, p, e: _list(s.event_list(p), p, "/v1/events")),
    ("GET", re.compile(rf"/v1/events/{_ID}"), lambda f, s, m, p, e: s.event_get(m[1])),
    ("POST", re.compile(rf"/v1/subscriptions/{_ID}/migrate"), lambda f, s, m, p, e: s.subscription_migrate(m[1], p)),
]


def _control(fake: StripeFake, method: str, path: str, data: dict) -> Any:
    """``/_fake/...``: the state transitions a test (or a person running `make run`) drives by hand."""
    parts = path.strip("/").split("/")[1:]
    if method == "GET" and parts == ["events"]:
        return fake.events
    if method == "GET" and parts == ["meter_events"]:
        with fake.state.lock:
            return [{k: v for k, v in e.items() if not k.startswith("_")} for e in fake.state.meter_events]
    if method != "POST":
        raise ApiError(404, f"Unknown control {method} {path}")
    if parts == ["faults"]:
        prefix = data.get("path_prefix") or "/v1/"
        count = int(data.get("count") or 1)
        if data.get("hang_s"):
            fake.hang_next(prefix, count=count, seconds=float(data["hang_s"]), then=data.get("then") or "process")
        else:
            fake.fail_next(prefix, count=count, status=int(data.get("status") or 500))
        return {"ok": True}
    if len(parts) == 3:
        kind, object_id, action = parts
        actions: dict[tuple[str, str], Callable[[], Any]] = {
            ("checkout", "complete"): lambda: fake.complete_checkout(
                object_id, business_name=data.get("business_name") or "", abn=data.get("abn") or ""
            ),
            ("subscriptions", "advance"): lambda: fake.advance(object_id),
            ("subscriptions", "end_trial"): lambda: fake.end_trial(object_id),
            ("subscriptions", "cancel"): lambda: fake.cancel(object_id),
            ("invoices", "pay"): lambda: fake.pay(object_id),
            ("customers", "card_declines"): lambda: fake.set_card_declines(
                object_id, as_bool(data.get("declines"), True)
            ),
            ("customers", "tax_ids"): lambda: fake.set_tax_id(
                object_id, str(data.get("value") or ""), str(data.get("type") or "au_abn")
            ),
        }
        if (kind, action) in actions:
            return actions[(kind, action)]() or {"ok": True}
    raise ApiError(404, f"Unknown control {method} {path}")


class _Handler(BaseHTTPRequestHandler):
    server_version = "stripe-stand-in/1"
    protocol_version = "HTTP/1.0"

    def log_message(self, format: str, *args: Any) -> None:  # quiet: tests read fake.requests instead
        pass

    @property
    def fake(self) -> StripeFake:
        return self.server.fake  # type: ignore[attr-defined]

    def do_GET(self) -> None:
        self._handle("GET")

    def do_POST(self) -> None:
        self._handle("POST")

    def do_DELETE(self) -> None:
        self._handle("DELETE")

    def _send(self, status: int, body: bytes, content_type: str, headers: dict[str, str] | None = None) -> None:
        try:
            self.send_response(status)
            self.send_header("Content-Type", content_type)
            self.send_header("Content-Length", str(len(body)))
            self.send_header("Request-Id", new_id("req_", 14))
            for name, value in (headers or {}).items():
                self.send_header(name, value)
            self.end_headers()
            self.wfile.write(body)
        except (BrokenPipeError, ConnectionResetError):
            pass  # the client gave up (a timeout test): nothing to tell it

    def _json(self, status: int, payload: Any, headers: dict[str, str] | None = None) -> None:
        self._send(status, json.dumps(payload).encode(), "application/json", headers)

    def _redirect(self, location: str) -> None:
        self._send(303, b"", "text/plain", {"Location": location})

    def _handle(self, method: str) -> None:
        fake = self.fake
        split = urlsplit(self.path)
        path = split.path
        length = int(self.headers.get("Content-Length") or 0)
        raw = self.rfile.read(length).decode() if length else ""
        headers = {k.lower(): v for k, v in self.headers.items()}
        fault = fake._take_fault(path)
        if fault is not None:
            if fault.hang_s:
                fake._stopping.wait(fault.hang_s)
                if fault.then == "drop":
                    self.close_connection = True
                    return
            else:
                if fault.status == 429:
                    error = {"type": "invalid_request_error", "code": "rate_limit", "message": "Too many requests."}
                else:
                    error = {"type": "api_error", "message": "An unknown error occurred"}
                self._json(fault.status, {"error": error})
                return
        try:
            if path.startswith("/v1/"):
                self._api(method, path, split.query, raw, headers)
            elif path.startswith("/_fake/"):
                data = json.loads(raw) if raw.strip().startswith("{") else dict(parse_qsl(raw))
                self._json(200, _control(fake, method, path, data))
            else:
                self._hosted(method, path, dict(parse_qsl(raw, keep_blank_values=True)))
        except ApiError as exc:
            self._json(exc.status, exc.body(), exc.headers)
        except (FormError, ValueError) as exc:
            self._json(400, invalid(str(exc)).body())

    def _api(self, method: str, path: str, query: str, raw: str, headers: dict[str, str]) -> None:
        fake = self.fake
        params = decode(query if method in ("GET", "DELETE") else raw)
        with fake.state.lock:
            fake.requests.append(
                {"method": method, "path": path, "params": params, "idempotency_key": headers.get("idempotency-key")}
            )
        status, body, extra = fake.api(method, path, params, headers)
        self._send(status, body, "application/json", {"Stripe-Version": headers.get("stripe-version", ""), **extra})

    # --- hosted pages ---------------------------------------------------------------------------------------------
    def _hosted(self, method: str, path: str, form: dict[str, str]) -> None:
        fake = self.fake
        state = fake.state
        parts = path.strip("/").split("/")
        html = "text/html; charset=utf-8"
        with state.lock:
            if parts[0] == "checkout" and len(parts) == 2:
                session = state.checkout_session(parts[1])
                if method == "POST":
                    address = {
                        "city": form.get("city") or "Sydney",
                        "country": "AU",
                        "line1": form.get("line1") or "1 Test Street",
                        "line2": None,
                        "postal_code": form.get("postal_code") or "2000",
                        "state": form.get("state") or "NSW",
                    }
                    try:
                        state.checkout_complete(
                            parts[1],
                            business_name=form.get("business_name", "").strip(),
                            abn=form.get("abn", "").strip(),
                            address=address,
                        )
                    except ApiError as exc:
                        body = pages.checkout_page(
                            session, state.checkout_lines(parts[1]), state.checkout_extras(parts[1]), exc.message
                        )
                        self._send(402 if exc.status == 402 else 400, body, html)
                        return
                    self._redirect(session["success_url"].replace("{CHECKOUT_SESSION_ID}", session["id"]))
                    return
                body = pages.checkout_page(session, state.checkout_lines(parts[1]), state.checkout_extras(parts[1]))
                self._send(200, body, html)
                return
            if parts[0] == "portal" and len(parts) in (2, 3):
                session = state.portal_session(parts[1])
                customer_id = session["customer"]
                if method == "POST" and len(parts) == 3:
                    sub_id = form.get("subscription", "")
                    if parts[2] in ("cancel", "renew"):
                        sub = state.subscription(sub_id)
                        if sub["customer"] != customer_id:
                            raise ApiError(404, "No such subscription")
                        state.subscription_update(sub_id, {"cancel_at_period_end": str(parts[2] == "cancel").lower()})
                    elif parts[2] == "card":
                        state.card_replace(customer_id)
                    self._redirect(f"/portal/{parts[1]}")
                    return
                subs = [s for s in state.subscriptions.values() if s["customer"] == customer_id]
                invoices = state.invoice_list({"customer": customer_id})
                self._send(200, pages.portal_page(session, state.customer(customer_id), subs, invoices), html)
                return
            if parts[0] == "invoices" and len(parts) in (2, 3):
                invoice = state.invoice(parts[1])
                lines = state.invoice_lines(parts[1])
                if len(parts) == 3 and parts[2] == "pdf" and method == "GET":
                    self._send(200, pages.invoice_pdf(invoice, lines), "application/pdf")
                    return
                if len(parts) == 3 and parts[2] == "pay" and method == "POST":
                    state.invoice_pay(parts[1])
                    self._redirect(f"/invoices/{parts[1]}")
                    return
                if len(parts) == 2:
                    self._send(200, pages.invoice_page(invoice, lines), html)
                    return
        self._send(404, b"Not found", "text/plain")
