from django.urls import path

from tenants.api import views

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
]
