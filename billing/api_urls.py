from django.urls import path

from billing import api

urlpatterns = [
    path("usage", api.UsageView.as_view(), name="api_usage"),
    path("limits", api.LimitsView.as_view(), name="api_limits"),
    path("billing", api.BillingView.as_view(), name="api_billing"),
    path("billing/invoices", api.InvoiceListView.as_view(), name="api_billing_invoices"),
]
