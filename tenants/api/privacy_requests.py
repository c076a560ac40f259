"""Individuals' requests on the management API (``audit.privacy_requests``): a tenant's CRM files and carries
out its end customers' APP 12/13 requests. Scopes as elsewhere: reading needs ``management:read``, opening and
carrying out ``management:write``; console users need a recent re-authentication to carry one out."""

from __future__ import annotations

from django.http import Http404
from drf_spectacular.utils import OpenApiResponse, extend_schema
from rest_framework import serializers, status
from rest_framework.response import Response

from audit import privacy_requests as services
from audit.models import PrivacyRequest
from tenants.api.views import COMMON, ManagementView, _actor, _errors, _service_errors
from tenants.permissions import Action
from tenants.views.privacy_requests import download

PAGE = 100


class PrivacyRequestSerializer(serializers.ModelSerializer):
    class Meta:
        model = PrivacyRequest
        fields = ["id", "kind", "status", "customer_id", "new_customer_id", "note", "channel", "received_at",
                  "due_at", "completed_at", "refusal_reason", "outcome"]
        read_only_fields = fields


class PrivacyRequestCreateSerializer(serializers.Serializer):
    kind = serializers.ChoiceField(choices=PrivacyRequest.Kind.values)
    customer_id = serializers.CharField(max_length=64)
    new_customer_id = serializers.CharField(max_length=64, required=False, allow_blank=True)
    note = serializers.CharField(max_length=500, required=False, allow_blank=True)


class CarryOutSerializer(serializers.Serializer):
    text = serializers.CharField(max_length=services.ANNOTATION_MAX, required=False, allow_blank=True,
                                 help_text="Annotations only: the individual's statement.")


class RefuseSerializer(serializers.Serializer):
    reason = serializers.CharField(max_length=500)


class ExportDocumentSerializer(serializers.Serializer):
    version = serializers.IntegerField()
    tenant = serializers.CharField()
    customer_id = serializers.CharField()
    generated_at = serializers.DateTimeField()
    privacy_request = serializers.CharField()
    holdings = serializers.DictField(help_text="Every record held, by holder (access_log, conversations, "
                                               "transcripts, annotations).")
    sections = serializers.DictField()
    requests = serializers.ListField()


def _get(tenant, request_id) -> PrivacyRequest:
    found = PrivacyRequest.objects.filter(tenant=tenant, pk=request_id).first()
    if found is None:
        raise Http404
    return found


class PrivacyRequestListView(ManagementView):
    actions = {"GET": Action.PRIVACY_REQUESTS_MANAGE, "POST": Action.PRIVACY_REQUESTS_MANAGE}
    reauthenticate = frozenset({"POST"})
    serializer_class = PrivacyRequestSerializer

    @extend_schema(operation_id="privacy_requests_list", summary="Individuals' requests, open first",
                   responses={200: PrivacyRequestSerializer(many=True), **_errors(*COMMON)})
    def get(self, request):
        found = services.open_first(PrivacyRequest.objects.filter(tenant=self.access.tenant))[:PAGE]
        return Response(PrivacyRequestSerializer(found, many=True).data)

    @extend_schema(operation_id="privacy_requests_create", summary="Record an individual's request (due in 30 days)",
                   request=PrivacyRequestCreateSerializer,
                   responses={201: PrivacyRequestSerializer, **_errors(400, *COMMON)})
    def post(self, request):
        serializer = PrivacyRequestCreateSerializer(data=request.data)
        serializer.is_valid(raise_exception=True)
        created = _service_errors(lambda: services.privacy_request_open(
            tenant=self.access.tenant, channel=PrivacyRequest.Channel.API, actor=_actor(request),
            request=request._request, api_key_id=getattr(request.auth, "key_id", ""), **serializer.validated_data))
        return Response(PrivacyRequestSerializer(created).data, status=status.HTTP_201_CREATED)


class PrivacyRequestDetailView(ManagementView):
    actions = {"GET": Action.PRIVACY_REQUESTS_MANAGE}
    serializer_class = PrivacyRequestSerializer

    @extend_schema(operation_id="privacy_requests_retrieve", summary="One individual's request",
                   responses={200: PrivacyRequestSerializer, **_errors(404, *COMMON)})
    def get(self, request, request_id):
        return Response(PrivacyRequestSerializer(_get(self.access.tenant, request_id)).data)


class PrivacyRequestCarryOutView(ManagementView):
    actions = {"POST": Action.PRIVACY_REQUESTS_MANAGE}
    reauthenticate = frozenset({"POST"})
    serializer_class = CarryOutSerializer

    @extend_schema(operation_id="privacy_requests_carry_out",
                   summary="Carry out a request: the copy for an access request, else the completed request",
                   request=CarryOutSerializer,
                   responses={200: OpenApiResponse(description="The export document (access) or the request "
                                                               "(correction, annotation, erasure)"),
                              **_errors(400, 404, *COMMON)})
    def post(self, request, request_id):
        privacy_request = _get(self.access.tenant, request_id)
        serializer = CarryOutSerializer(data=request.data)
        serializer.is_valid(raise_exception=True)
        result = _service_errors(lambda: services.privacy_request_carry_out(
            privacy_request=privacy_request, actor=_actor(request), request=request._request,
            text=serializer.validated_data.get("text"), stream=True))
        if not isinstance(result, PrivacyRequest):
            return download(result, privacy_request)  # the copy, streamed: it can be very large
        return Response(PrivacyRequestSerializer(result).data)


class PrivacyRequestRefuseView(ManagementView):
    actions = {"POST": Action.PRIVACY_REQUESTS_MANAGE}
    reauthenticate = frozenset({"POST"})
    serializer_class = RefuseSerializer

    @extend_schema(operation_id="privacy_requests_refuse", summary="Refuse a request, with the reason",
                   request=RefuseSerializer, responses={200: PrivacyRequestSerializer, **_errors(400, 404, *COMMON)})
    def post(self, request, request_id):
        privacy_request = _get(self.access.tenant, request_id)
        serializer = RefuseSerializer(data=request.data)
        serializer.is_valid(raise_exception=True)
        result = _service_errors(lambda: services.privacy_request_refuse(
            privacy_request=privacy_request, reason=serializer.validated_data["reason"], actor=_actor(request),
            request=request._request))
        return Response(PrivacyRequestSerializer(result).data)
