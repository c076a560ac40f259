from allauth.account.decorators import secure_admin_login
from django.contrib import admin
from django.urls import include, path
from drf_spectacular.views import SpectacularAPIView

from portal import api_docs, data_processing, views

# Django's admin signs in through allauth (so MFA and rate limits apply), never its own form.
admin.site.login = secure_admin_login(admin.site.login)

urlpatterns = [
    path("", views.home, name="home"),
    path("dashboard/", views.dashboard, name="dashboard"),
    path("privacy/", views.privacy_policy, name="privacy"),
    path("terms/", views.terms, name="terms"),
    path("favicon.ico", views.favicon, name="favicon"),
    path("healthz", views.healthz, name="healthz"),
    path("readyz", views.readyz, name="readyz"),
    path("accounts/", include("allauth.urls")),
    path("api/v1/", include("tenants.api.urls")),
    path("api/v1/", include("billing.api_urls")),  # usage and limits: billing's numbers, the same API
    path("api/v1/data-processing", data_processing.DataProcessingView.as_view(), name="api_data_processing"),
    path("api/schema/", SpectacularAPIView.as_view(), name="api_schema"),
    path("api/docs/", api_docs.ApiDocsView.as_view(url_name="api_schema"), name="api_docs"),
    path("staff/django-admin/", admin.site.urls),
    path("t/<slug:slug>/data-processing/", data_processing.tenant_data_processing, name="tenant_data_processing"),
    path("", include("inference.urls")),
    path("", include("billing.urls")),
    path("", include("tenants.urls")),
]

handler400 = "portal.errors.bad_request"
handler403 = "portal.errors.permission_denied"
handler404 = "portal.errors.page_not_found"
handler500 = "portal.errors.server_error"
