from django.urls import path

from billing import (
    audit_browser,
    billing_console,
    request_logs,
    staff_billing,
    staff_incidents,
    staff_tenants,
    subscription_views,
    tenant_console,
    views,
    webhooks,
)

urlpatterns = [
    path("staff/limits/", views.near_limits, name="staff_near_limits"),
    path("staff/plans/", views.plans, name="staff_plans"),
    path("staff/plans/<slug:plan_slug>/", views.plan_edit, name="staff_plan_edit"),
    path("staff/plans/<slug:plan_slug>/sync/", views.plan_stripe_sync, name="staff_plan_stripe_sync"),
    path("staff/plans/<slug:plan_slug>/prices/", views.plan_price_set, name="staff_plan_price_set"),
    path("staff/plans/<slug:plan_slug>/prices/remove/", views.plan_price_remove, name="staff_plan_price_remove"),
    path("staff/prices/", views.price_set, name="staff_price_set"),
    path("staff/tenants/<slug:slug>/cost-guard/lift/", views.cost_guard_lift_view, name="staff_cost_guard_lift"),
    path("staff/", staff_tenants.tenant_list, name="staff_tenant_list"),
    path("staff/tenants/<slug:slug>/", staff_tenants.tenant_detail, name="staff_tenant_detail"),
    path("staff/tenants/<slug:slug>/status/", staff_tenants.tenant_status, name="staff_tenant_status"),
    path("staff/tenants/<slug:slug>/limits/", staff_tenants.tenant_limits, name="staff_tenant_limits"),
    path("staff/tenants/<slug:slug>/keys/<str:key_id>/limits/", staff_tenants.key_limits, name="staff_key_limits"),
    path("staff/tenants/<slug:slug>/act-as/", staff_tenants.act_as_start, name="staff_act_as_start"),
    path("staff/act-as/end/", staff_tenants.act_as_end, name="staff_act_as_end"),
    # The tenant console's usage and limits pages: billing's numbers, at the console's paths.
    path("t/<slug:slug>/limits/", tenant_console.limits, name="tenant_limits"),
    path("t/<slug:slug>/usage/", tenant_console.usage, name="tenant_usage"),
    path("t/<slug:slug>/logs/", request_logs.request_logs, name="tenant_request_logs"),
    path("t/<slug:slug>/billing/", billing_console.tenant_billing, name="tenant_billing"),
    # Subscribing and managing (Stripe Checkout and the Customer Portal), and Stripe's webhooks.
    path("t/<slug:slug>/billing/checkout/<slug:plan_slug>/", subscription_views.checkout,
         name="tenant_billing_checkout"),
    path("t/<slug:slug>/billing/return/", subscription_views.checkout_return, name="tenant_billing_return"),
    path("t/<slug:slug>/billing/cancelled/", subscription_views.checkout_cancelled, name="tenant_billing_cancelled"),
    path("t/<slug:slug>/billing/portal/", subscription_views.portal, name="tenant_billing_portal"),
    path("billing/stripe/webhook/", webhooks.stripe_webhook, name="stripe_webhook"),
    path("t/<slug:slug>/billing/usage.csv", billing_console.tenant_billing_usage_csv, name="tenant_billing_usage_csv"),
    path("staff/revenue/", billing_console.staff_revenue, name="staff_revenue"),
    # The breach register (audit.Incident): here because its blast radius reads billing's usage events.
    path("staff/incidents/", staff_incidents.incident_list, name="staff_incident_list"),
    path("staff/incidents/new/", staff_incidents.incident_new, name="staff_incident_new"),
    path("staff/incidents/<uuid:incident_id>/", staff_incidents.incident_detail, name="staff_incident_detail"),
    path("staff/incidents/<uuid:incident_id>/decide/", staff_incidents.incident_decide, name="staff_incident_decide"),
    path("staff/incidents/<uuid:incident_id>/close/", staff_incidents.incident_close, name="staff_incident_close"),
    path("staff/incidents/<uuid:incident_id>/notify/", staff_incidents.incident_notify, name="staff_incident_notify"),
    # The audit browser (audit.selectors): staff see every tenant's trail, owners and admins their own.
    path("staff/audit/", audit_browser.staff_audit, name="staff_audit"),
    path("t/<slug:slug>/audit/", audit_browser.tenant_audit, name="tenant_audit"),
    path("staff/reconciliation/", staff_billing.reconciliation, name="staff_reconciliation"),
    path("staff/reconciliation/<slug:slug>/", staff_billing.reconciliation_tenant, name="staff_reconciliation_tenant"),
]
