from django.urls import path

from tenants.api import privacy_requests, views

urlpatterns = [
    path("tenant", views.TenantView.as_view(), name="api_tenant"),
    path("members", views.MemberListView.as_view(), name="api_members"),
    path("members/<uuid:member_id>", views.MemberDetailView.as_view(), name="api_member"),
    path("members/<uuid:member_id>/transfer-ownership", views.OwnershipTransferView.as_view(),
         name="api_member_transfer_ownership"),
    path("invitations", views.InvitationListView.as_view(), name="api_invitations"),
    path("invitations/<uuid:invitation_id>", views.InvitationDetailView.as_view(), name="api_invitation"),
    path("keys", views.ApiKeyListView.as_view(), name="api_keys"),
    path("keys/<str:key_id>", views.ApiKeyDetailView.as_view(), name="api_key"),
    path("keys/<str:key_id>/rotate", views.ApiKeyRotateView.as_view(), name="api_key_rotate"),
    path("privacy-requests", privacy_requests.PrivacyRequestListView.as_view(), name="api_privacy_requests"),
    path("privacy-requests/<uuid:request_id>", privacy_requests.PrivacyRequestDetailView.as_view(),
         name="api_privacy_request"),
    path("privacy-requests/<uuid:request_id>/carry-out", privacy_requests.PrivacyRequestCarryOutView.as_view(),
         name="api_privacy_request_carry_out"),
    path("privacy-requests/<uuid:request_id>/refuse", privacy_requests.PrivacyRequestRefuseView.as_view(),
         name="api_privacy_request_refuse"),
]
