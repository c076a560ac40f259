"""The management API (``/api/v1/``). Each view validates, calls one service, and presents the result; the
permission class has already resolved the tenant and checked the matrix for the method."""

from __future__ import annotations

from django.core.exceptions import PermissionDenied as DjangoPermissionDenied
from django.core.exceptions import ValidationError as DjangoValidationError
from drf_spectacular.utils import OpenApiResponse, extend_schema
from rest_framework import exceptions, status
from rest_framework.generics import GenericAPIView
from rest_framework.response import Response

from tenants import selectors, services
from tenants.api import serializers as s
from tenants.models import ApiKey
from tenants.permissions import Action


def _errors(*statuses: int) -> dict:
    descriptions = {
        400: "Malformed input", 401: "Not authenticated", 402: "Organisation suspended",
        403: "Not allowed (role, scope, MFA or re-authentication)", 404: "Not found (or another tenant's)",
        429: "Too many requests",
    }
    return {code: OpenApiResponse(s.ErrorSerializer, description=descriptions[code]) for code in statuses}


COMMON = (401, 402, 403, 429)


def _service_errors(call):
    """Run a service; its ValidationError becomes a 400 and PermissionDenied a 403, in the API's shape."""
    try:
        return call()
    except DjangoValidationError as exc:
        detail = exc.message_dict if hasattr(exc, "message_dict") else exc.messages
        raise exceptions.ValidationError(detail, code=getattr(exc, "code", None) or "invalid") from None
    except DjangoPermissionDenied as exc:
        raise exceptions.PermissionDenied(str(exc) or None) from None


def _actor(request):
    return request.user if request.user.is_authenticated else None


class ManagementView(GenericAPIView):
    actions: dict[str, Action] = {}
    reauthenticate: frozenset[str] = frozenset()

    @property
    def access(self):
        return self.request.tenant_access

    def query(self, serializer_class):
        serializer = serializer_class(data=self.request.query_params)
        serializer.is_valid(raise_exception=True)
        return serializer.validated_data


# --- tenant ----------------------------------------------------------------------------------------
class TenantView(ManagementView):
    actions = {"GET": Action.TENANT_VIEW, "PATCH": Action.TENANT_UPDATE}
    serializer_class = s.TenantSerializer

    @extend_schema(operation_id="tenant_retrieve", summary="The current tenant", responses={200: s.TenantSerializer,
                   **_errors(*COMMON)})
    def get(self, request):
        return Response(s.TenantSerializer(self.access.tenant).data)

    @extend_schema(operation_id="tenant_update", summary="Update the tenant's details",
                   request=s.TenantUpdateSerializer, responses={200: s.TenantSerializer, **_errors(400, *COMMON)})
    def patch(self, request):
        serializer = s.TenantUpdateSerializer(data=request.data)
        serializer.is_valid(raise_exception=True)
        tenant = services.tenant_update(tenant=self.access.tenant, actor=_actor(request), request=request._request,
                                        **serializer.validated_data)
        return Response(s.TenantSerializer(tenant).data)


# --- members ---------------------------------------------------------------------------------------
class MemberListView(ManagementView):
    actions = {"GET": Action.MEMBERS_VIEW}
    serializer_class = s.MemberSerializer

    @extend_schema(operation_id="members_list", summary="List members", parameters=[s.MemberFilterSerializer],
                   responses={200: s.MemberSerializer(many=True), **_errors(400, *COMMON)})
    def get(self, request):
        filters = self.query(s.MemberFilterSerializer)
        page = self.paginate_queryset(selectors.members_for_tenant(tenant=self.access.tenant, role=filters.get("role")))
        return self.get_paginated_response(s.MemberSerializer(page, many=True).data)


class MemberDetailView(ManagementView):
    actions = {"GET": Action.MEMBERS_VIEW, "PATCH": Action.MEMBERS_CHANGE_ROLE, "DELETE": Action.MEMBERS_REMOVE}
    reauthenticate = frozenset({"DELETE"})
    serializer_class = s.MemberSerializer

    def member(self, member_id):
        return selectors.member_get(tenant=self.access.tenant, member_id=member_id)

    @extend_schema(operation_id="members_retrieve", summary="One member",
                   responses={200: s.MemberSerializer, **_errors(404, *COMMON)})
    def get(self, request, member_id):
        return Response(s.MemberSerializer(self.member(member_id)).data)

    @extend_schema(operation_id="members_update", summary="Change a member's role", request=s.MemberUpdateSerializer,
                   responses={200: s.MemberSerializer, **_errors(400, 404, *COMMON)})
    def patch(self, request, member_id):
        membership = self.member(member_id)
        serializer = s.MemberUpdateSerializer(data=request.data)
        serializer.is_valid(raise_exception=True)
        membership = _service_errors(lambda: services.member_change_role(
            membership=membership, role=serializer.validated_data["role"], actor=_actor(request),
            actor_role=self.access.role, request=request._request))
        return Response(s.MemberSerializer(membership).data)

    @extend_schema(operation_id="members_destroy", summary="Remove a member (their sessions lose access at once)",
                   responses={204: None, **_errors(400, 404, *COMMON)})
    def delete(self, request, member_id):
        membership = self.member(member_id)
        _service_errors(lambda: services.member_remove(membership=membership, actor=_actor(request),
                                                       actor_role=self.access.role, request=request._request))
        return Response(status=status.HTTP_204_NO_CONTENT)


class OwnershipTransferView(ManagementView):
    actions = {"POST": Action.OWNERSHIP_TRANSFER}
    reauthenticate = frozenset({"POST"})
    serializer_class = s.MemberSerializer

    @extend_schema(operation_id="members_transfer_ownership", request=None,
                   summary="Make this member the owner; you become an admin",
                   responses={200: s.MemberSerializer, **_errors(400, 404, *COMMON)})
    def post(self, request, member_id):
        target = selectors.member_get(tenant=self.access.tenant, member_id=member_id)
        membership = _service_errors(lambda: services.ownership_transfer(
            tenant=self.access.tenant, from_membership=self.access.membership, to_membership=target,
            actor=_actor(request), request=request._request))
        return Response(s.MemberSerializer(membership).data)


# --- invitations -----------------------------------------------------------------------------------
class InvitationListView(ManagementView):
    actions = {"GET": Action.INVITATIONS_VIEW, "POST": Action.INVITATIONS_MANAGE}
    serializer_class = s.InvitationSerializer

    @extend_schema(operation_id="invitations_list", summary="List invitations",
                   parameters=[s.InvitationFilterSerializer],
                   responses={200: s.InvitationSerializer(many=True), **_errors(400, *COMMON)})
    def get(self, request):
        filters = self.query(s.InvitationFilterSerializer)
        qs = selectors.invitations_for_tenant(tenant=self.access.tenant, status=filters.get("status"))
        page = self.paginate_queryset(qs)
        return self.get_paginated_response(s.InvitationSerializer(page, many=True).data)

    @extend_schema(operation_id="invitations_create", summary="Invite someone by email",
                   request=s.InvitationCreateSerializer,
                   responses={201: s.InvitationSerializer, **_errors(400, *COMMON)})
    def post(self, request):
        serializer = s.InvitationCreateSerializer(data=request.data)
        serializer.is_valid(raise_exception=True)
        issued = _service_errors(lambda: services.member_invite(
            tenant=self.access.tenant, email=serializer.validated_data["email"],
            role=serializer.validated_data["role"], invited_by=_actor(request), inviter_role=self.access.role,
            request=request._request))
        return Response(s.InvitationSerializer(issued.invitation).data, status=status.HTTP_201_CREATED)


class InvitationDetailView(ManagementView):
    actions = {"GET": Action.INVITATIONS_VIEW, "DELETE": Action.INVITATIONS_MANAGE}
    serializer_class = s.InvitationSerializer

    @extend_schema(operation_id="invitations_retrieve", summary="One invitation",
                   responses={200: s.InvitationSerializer, **_errors(404, *COMMON)})
    def get(self, request, invitation_id):
        invitation = selectors.invitation_get(tenant=self.access.tenant, invitation_id=invitation_id)
        return Response(s.InvitationSerializer(invitation).data)

    @extend_schema(operation_id="invitations_revoke", summary="Revoke a pending invitation",
                   responses={200: s.InvitationSerializer, **_errors(400, 404, *COMMON)})
    def delete(self, request, invitation_id):
        invitation = selectors.invitation_get(tenant=self.access.tenant, invitation_id=invitation_id)
        invitation = _service_errors(lambda: services.invitation_revoke(
            invitation=invitation, actor=_actor(request), request=request._request))
        return Response(s.InvitationSerializer(invitation).data)


# --- API keys --------------------------------------------------------------------------------------
class ApiKeyListView(ManagementView):
    actions = {"GET": Action.KEYS_VIEW, "POST": Action.KEYS_CREATE}
    reauthenticate = frozenset({"POST"})
    serializer_class = s.ApiKeySerializer

    @extend_schema(operation_id="keys_list", summary="List API keys", parameters=[s.ApiKeyFilterSerializer],
                   responses={200: s.ApiKeySerializer(many=True), **_errors(400, *COMMON)})
    def get(self, request):
        filters = self.query(s.ApiKeyFilterSerializer)
        qs = selectors.api_keys_for_tenant(tenant=self.access.tenant, status=filters.get("status"),
                                           scope=filters.get("scope"))
        page = selectors.with_last_used(tenant=self.access.tenant, api_keys=list(self.paginate_queryset(qs)))
        return self.get_paginated_response(s.ApiKeySerializer(page, many=True).data)

    @extend_schema(operation_id="keys_create", summary="Create an API key (the response holds the secret, once)",
                   request=s.ApiKeyCreateSerializer,
                   responses={201: s.ApiKeyWithSecretSerializer, **_errors(400, *COMMON)})
    def post(self, request):
        serializer = s.ApiKeyCreateSerializer(data=request.data)
        serializer.is_valid(raise_exception=True)
        data = serializer.validated_data
        issued = _service_errors(lambda: services.api_key_create(
            tenant=self.access.tenant, name=data["name"], created_by=_actor(request), scopes=data["scopes"],
            allowed_models=data["allowed_models"], expires_at=data.get("expires_at"),
            limits=dict(data.get("limits") or {}), actor_role=self.access.role, request=request._request))
        issued.api_key.last_used_at = None
        body = s.ApiKeyWithSecretSerializer(issued.api_key, context={"secret": issued.plaintext}).data
        response = Response(body, status=status.HTTP_201_CREATED)
        response["Cache-Control"] = "no-store"
        return response


class ApiKeyDetailView(ManagementView):
    actions = {"GET": Action.KEYS_VIEW, "PATCH": Action.KEYS_LIMITS, "DELETE": Action.KEYS_REVOKE}
    serializer_class = s.ApiKeySerializer

    def api_key(self, key_id: str) -> ApiKey:
        api_key = selectors.api_key_get(tenant=self.access.tenant, key_id=key_id)
        return selectors.with_last_used(tenant=self.access.tenant, api_keys=[api_key])[0]

    @extend_schema(operation_id="keys_retrieve", summary="One API key",
                   responses={200: s.ApiKeySerializer, **_errors(404, *COMMON)})
    def get(self, request, key_id):
        return Response(s.ApiKeySerializer(self.api_key(key_id)).data)

    @extend_schema(operation_id="keys_update", summary="Change a key's own limits (never above the organisation's)",
                   request=s.ApiKeyUpdateSerializer,
                   responses={200: s.ApiKeySerializer, **_errors(400, 404, *COMMON)})
    def patch(self, request, key_id):
        api_key = self.api_key(key_id)
        serializer = s.ApiKeyUpdateSerializer(data=request.data)
        serializer.is_valid(raise_exception=True)
        try:
            updated = services.api_key_set_limits(api_key=api_key, limits=dict(serializer.validated_data["limits"]),
                                                  actor=_actor(request), actor_role=self.access.role,
                                                  request=request._request)
        except DjangoValidationError as exc:
            # Field errors read as the request named them: ``limits.rpm_limit``.
            detail = {"limits": exc.message_dict} if hasattr(exc, "message_dict") else exc.messages
            raise exceptions.ValidationError(detail) from None
        updated.last_used_at = api_key.last_used_at
        return Response(s.ApiKeySerializer(updated).data)

    @extend_schema(operation_id="keys_revoke", summary="Revoke an API key (refused by /v1 within a second)",
                   responses={200: s.ApiKeySerializer, **_errors(404, *COMMON)})
    def delete(self, request, key_id):
        api_key = self.api_key(key_id)
        revoked = _service_errors(lambda: services.api_key_revoke(
            api_key=api_key, actor=_actor(request), actor_role=self.access.role, request=request._request))
        revoked.last_used_at = api_key.last_used_at
        return Response(s.ApiKeySerializer(revoked).data)


class ApiKeyRotateView(ManagementView):
    actions = {"POST": Action.KEYS_ROTATE}
    reauthenticate = frozenset({"POST"})
    serializer_class = s.ApiKeyWithSecretSerializer

    @extend_schema(operation_id="keys_rotate", summary="Give a key a new secret (the old one works for a grace period)",
                   request=s.ApiKeyRotateSerializer,
                   responses={200: s.ApiKeyWithSecretSerializer, **_errors(400, 404, *COMMON)})
    def post(self, request, key_id):
        api_key = selectors.api_key_get(tenant=self.access.tenant, key_id=key_id)
        serializer = s.ApiKeyRotateSerializer(data=request.data)
        serializer.is_valid(raise_exception=True)
        issued = _service_errors(lambda: services.api_key_rotate(
            api_key=api_key, grace=serializer.grace(), actor=_actor(request), actor_role=self.access.role,
            request=request._request))
        selectors.with_last_used(tenant=self.access.tenant, api_keys=[issued.api_key])
        response = Response(s.ApiKeyWithSecretSerializer(issued.api_key, context={"secret": issued.plaintext}).data)
        response["Cache-Control"] = "no-store"
        return response
