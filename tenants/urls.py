from django.urls import path

from tenants.views import console, privacy_requests

urlpatterns = [
    path("account/mfa-required/", console.mfa_required, name="mfa_required"),
    path("invite/<str:token>/", console.invitation_accept, name="invitation_accept"),
    path("t/<slug:slug>/", console.tenant_home, name="tenant_home"),
    path("t/<slug:slug>/welcome/", console.onboarding, name="tenant_onboarding"),
    path("t/<slug:slug>/members/", console.members, name="tenant_members"),
    path("t/<slug:slug>/members/<uuid:member_id>/role/", console.member_role, name="tenant_member_role"),
    path("t/<slug:slug>/members/<uuid:member_id>/remove/", console.member_remove, name="tenant_member_remove"),
    path("t/<slug:slug>/members/<uuid:member_id>/transfer-ownership/", console.ownership_transfer,
         name="tenant_ownership_transfer"),
    path("t/<slug:slug>/invitations/", console.invitation_create, name="tenant_invitation_create"),
    path("t/<slug:slug>/invitations/<uuid:invitation_id>/revoke/", console.invitation_revoke,
         name="tenant_invitation_revoke"),
    path("t/<slug:slug>/keys/", console.keys, name="tenant_keys"),
    path("t/<slug:slug>/keys/new/", console.key_create, name="tenant_key_create"),
    path("t/<slug:slug>/keys/<str:key_id>/", console.key_detail, name="tenant_key_detail"),
    path("t/<slug:slug>/keys/<str:key_id>/revoke/", console.key_revoke, name="tenant_key_revoke"),
    path("t/<slug:slug>/keys/<str:key_id>/rotate/", console.key_rotate, name="tenant_key_rotate"),
    path("t/<slug:slug>/keys/<str:key_id>/limits/", console.key_limits, name="tenant_key_limits"),
    path("t/<slug:slug>/settings/", console.tenant_settings, name="tenant_settings"),
    path("t/<slug:slug>/privacy-requests/", privacy_requests.tenant_privacy_requests,
         name="tenant_privacy_requests"),
    path("t/<slug:slug>/privacy-requests/<uuid:request_id>/", privacy_requests.tenant_privacy_request,
         name="tenant_privacy_request"),
    path("staff/privacy-requests/", privacy_requests.staff_privacy_requests, name="staff_privacy_requests"),
]
