from django.urls import path

from billing import views

urlpatterns = [
    path("staff/limits/", views.near_limits, name="staff_near_limits"),
    path("staff/plans/", views.plans, name="staff_plans"),
    path("staff/plans/<slug:plan_slug>/", views.plan_edit, name="staff_plan_edit"),
    path("staff/prices/", views.price_set, name="staff_price_set"),
    path("staff/tenants/<slug:slug>/cost-guard/lift/", views.cost_guard_lift_view, name="staff_cost_guard_lift"),
]
