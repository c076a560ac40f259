"""The API docs page: the inference API (`/v1`, described by ``inference.openapi`` and served by the gateway at
/v1/openapi.json) and the management API (`/api/v1`, drf-spectacular's schema), one at a time in Swagger UI,
under the console's header with tabs to switch. drf-spectacular's split view keeps the CSP strict: the page
loads its start-up script from ``?script=``, and that script asks for the chosen API's document."""

from __future__ import annotations

from drf_spectacular.utils import extend_schema
from drf_spectacular.views import SpectacularSwaggerSplitView

INFERENCE_SCHEMA_URL = "/v1/openapi.json"
APIS = {
    "inference": "Inference API (/v1)",
    "management": "Management API (/api/v1)",
}


def chosen(request) -> str:
    """``?api=inference`` or ``?api=management``; anything else is the management API, the page's default."""
    api = request.GET.get("api", "")
    return api if api in APIS else "management"


class ApiDocsView(SpectacularSwaggerSplitView):
    template_name = "portal/api_docs.html"
    title = "API docs"

    def _get_schema_url(self, request):
        if chosen(request) == "inference":
            return INFERENCE_SCHEMA_URL
        return super()._get_schema_url(request)

    @extend_schema(exclude=True)  # the page itself is no part of the management API
    def get(self, request, *args, **kwargs):
        response = super().get(request, *args, **kwargs)
        if request.GET.get("script") is None:
            api = chosen(request)
            response.data.update(api=api, apis=[(key, label, key == api) for key, label in APIS.items()],
                                 schema_url=self._get_schema_url(request))
        return response
