from __future__ import annotations

import secrets

from asgiref.sync import iscoroutinefunction, markcoroutinefunction
from django.conf import settings

from core.proxies import parse_trusted_proxies
from portal.logging import current_request_id


class ClientAddressMiddleware:
    """Resolve the client's address once, before anything reads it: ``REMOTE_ADDR`` becomes the address the
    trusted proxies vouch for (``TRUSTED_PROXIES``, core/proxies.py), so allauth's login throttle, DRF's
    throttles and the audit trail all see the same one. The connection's own peer stays in ``WATTLE_PEER_ADDR``
    for the internal-caller rule, which resolves from the raw inputs itself."""

    sync_capable = True
    async_capable = True

    def __init__(self, get_response) -> None:
        self.get_response = get_response
        if iscoroutinefunction(get_response):
            markcoroutinefunction(self)

    def __call__(self, request):
        meta = request.META
        peer = meta.get("REMOTE_ADDR")
        meta["WATTLE_PEER_ADDR"] = peer
        address, _vouched = parse_trusted_proxies(settings.TRUSTED_PROXIES).resolve(
            peer, meta.get("HTTP_X_FORWARDED_FOR")
        )
        if address is not None:
            meta["REMOTE_ADDR"] = str(address)
        return self.get_response(request)  # a coroutine in async mode, awaited by the caller


class RequestIdMiddleware:
    """Give every console request an id, in the logs and in the ``x-request-id`` response header."""

    sync_capable = True
    async_capable = True

    def __init__(self, get_response) -> None:
        self.get_response = get_response
        self._async = iscoroutinefunction(get_response)
        if self._async:
            markcoroutinefunction(self)

    def __call__(self, request):
        if self._async:
            return self.__acall__(request)
        token = self._start(request)
        try:
            response = self.get_response(request)
        finally:
            current_request_id.reset(token)
        response["x-request-id"] = request.request_id
        return response

    async def __acall__(self, request):
        token = self._start(request)
        try:
            response = await self.get_response(request)
        finally:
            current_request_id.reset(token)
        response["x-request-id"] = request.request_id
        return response

    @staticmethod
    def _start(request):
        request.request_id = "req_" + secrets.token_hex(12)
        return current_request_id.set(request.request_id)


class StripeFormActionMiddleware:
    """The console's plan and billing buttons post to us and are redirected to Stripe's Checkout or Portal: a
    browser follows that redirect only if the page's CSP ``form-action`` names Stripe's origin, so console pages
    get it added (nothing else does, and nothing at all while payments are off). Listed after django-csp's
    middleware, so this runs first on the way out."""

    sync_capable = True
    async_capable = True

    def __init__(self, get_response) -> None:
        self.get_response = get_response
        self.is_async = iscoroutinefunction(get_response)
        if self.is_async:
            markcoroutinefunction(self)

    def __call__(self, request):
        if self.is_async:
            return self._acall(request)
        return self._allow_stripe(request, self.get_response(request))

    async def _acall(self, request):
        return self._allow_stripe(request, await self.get_response(request))

    @staticmethod
    def _allow_stripe(request, response):
        if request.path_info.startswith("/t/"):
            from billing.stripe_gateway import hosted_page_origins

            origins = hosted_page_origins()
            if origins:
                update = dict(getattr(response, "_csp_update", None) or {})
                update["form-action"] = [*update.get("form-action", []), *origins]
                response._csp_update = update
        return response
