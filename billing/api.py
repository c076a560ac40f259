"""Billing's part of the management API (``/api/v1/usage``, ``/api/v1/limits``, ``/api/v1/billing``): the same
views, permissions, errors and schema as the rest of it (``tenants.api``), serving billing's numbers."""

from __future__ import annotations

from drf_spectacular.utils import extend_schema
from rest_framework.pagination import CursorPagination
from rest_framework.response import Response

from billing import api_serializers as bs
from billing.billing_reads import billing_overview, invoice_page
from billing.models import Invoice
from billing.quota_reads import quota_report
from billing.selectors import usage_summary, usage_window
from tenants import selectors
from tenants.api import serializers as s
from tenants.api.views import COMMON, ManagementView, _errors
from tenants.permissions import Action


# --- usage -----------------------------------------------------------------------------------------
class UsageView(ManagementView):
    actions = {"GET": Action.USAGE_VIEW}
    serializer_class = s.UsageSummarySerializer

    @extend_schema(operation_id="usage_summary", summary="Requests and tokens by day, model and key",
                   parameters=[s.UsageQuerySerializer],
                   responses={200: s.UsageSummarySerializer, **_errors(400, *COMMON)})
    def get(self, request):
        query = self.query(s.UsageQuerySerializer)
        since, until = usage_window(since=query.get("since"), until=query.get("until"))
        return Response(s.UsageSummarySerializer(usage_summary(tenant=self.access.tenant, since=since,
                                                               until=until)).data)


# --- limits ----------------------------------------------------------------------------------------
class LimitsView(ManagementView):
    actions = {"GET": Action.LIMITS_VIEW}
    serializer_class = s.LimitsReportSerializer

    @extend_schema(operation_id="limits_retrieve",
                   summary="Effective limits, where each comes from, and what is left now; per key too",
                   responses={200: s.LimitsReportSerializer, **_errors(*COMMON)})
    def get(self, request):
        api_keys = selectors.api_keys_for_limits(tenant=self.access.tenant)
        return Response(s.LimitsReportSerializer(quota_report(tenant=self.access.tenant, api_keys=api_keys)).data)


# --- billing ---------------------------------------------------------------------------------------
class BillingView(ManagementView):
    actions = {"GET": Action.BILLING_VIEW}
    serializer_class = bs.BillingSerializer

    @extend_schema(operation_id="billing_retrieve",
                   summary="Plan, subscription, current period, its usage and projected bill, spend, newest invoices",
                   responses={200: bs.BillingSerializer, **_errors(*COMMON)})
    def get(self, request):
        tenant = self.access.tenant
        overview = billing_overview(tenant=tenant)
        invoices = invoice_page(tenant=tenant).invoices
        return Response(bs.BillingSerializer(bs.billing_payload(overview, invoices)).data)


class InvoicePagination(CursorPagination):
    """Keyset pages, newest first: a page costs the same however many invoices came before it."""

    ordering = ("-created", "-stripe_invoice_id")
    page_size = 24
    max_page_size = 100
    page_size_query_param = "limit"


class InvoiceListView(ManagementView):
    actions = {"GET": Action.BILLING_VIEW}
    serializer_class = bs.InvoiceSerializer
    pagination_class = InvoicePagination

    @extend_schema(operation_id="billing_invoices_list", summary="Invoices, newest first (cursor pages)",
                   responses={200: bs.InvoiceSerializer(many=True), **_errors(400, 404, *COMMON)})
    def get(self, request):
        queryset = Invoice.objects.filter(tenant=self.access.tenant).exclude(status="draft")
        page = self.paginate_queryset(queryset)
        return self.get_paginated_response(bs.InvoiceSerializer(page, many=True).data)
