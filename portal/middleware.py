from __future__ import annotations

import secrets

from asgiref.sync import iscoroutinefunction, markcoroutinefunction

from portal.logging import current_request_id


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
