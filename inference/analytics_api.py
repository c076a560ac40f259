"""The management API's conversations (``/api/v1/conversations``): read-only, tenant-scoped lists and details of
closed conversations and their post-call analyses, with the same views, permissions, errors and schema as the rest
of the API (``tenants.api``). Who may read them: ``Action.CONVERSATIONS_VIEW``."""

from __future__ import annotations

from django.utils.dateparse import parse_datetime
from drf_spectacular.utils import extend_schema
from rest_framework import serializers
from rest_framework.exceptions import NotFound
from rest_framework.pagination import CursorPagination
from rest_framework.response import Response

from inference import analytics_reads as reads
from inference.analytics import RUBRIC
from inference.models import Conversation, ConversationAnalysis
from tenants.api.views import COMMON, ManagementView, _errors
from tenants.permissions import Action


# --- serializers ---------------------------------------------------------------------------------
class ConversationFilterSerializer(serializers.Serializer):
    channel = serializers.ChoiceField(choices=[k for k, _ in reads.ConversationFilter.base_fields["channel"].choices
                                               if k], required=False)
    escalated = serializers.BooleanField(required=False, allow_null=True, default=None)
    qa_min = serializers.IntegerField(min_value=0, max_value=100, required=False)
    qa_max = serializers.IntegerField(min_value=0, max_value=100, required=False)
    since = serializers.DateField(required=False, help_text="Closed on or after this day (UTC).")
    until = serializers.DateField(required=False, help_text="Closed on or before this day (UTC).")

    def validate(self, attrs):
        if attrs.get("qa_min") is not None and attrs.get("qa_max") is not None and attrs["qa_min"] > attrs["qa_max"]:
            raise serializers.ValidationError("qa_min is above qa_max.")
        return attrs


class RubricItemSerializer(serializers.Serializer):
    score = serializers.IntegerField(min_value=0, max_value=100)
    reason = serializers.CharField(allow_blank=True)


class RubricSerializer(serializers.Serializer):
    locals().update({item: RubricItemSerializer() for item in RUBRIC})


class AnalysisSerializer(serializers.ModelSerializer):
    rubric = RubricSerializer(help_text="Each rubric item's score (0-100) and reason.")
    cached = serializers.SerializerMethodField(help_text="Reused from an identical conversation's analysis.")

    class Meta:
        model = ConversationAnalysis
        fields = ["id", "status", "failure_reason", "summary", "qa_score", "rubric", "rubric_version", "model",
                  "attempts", "prompt_tokens", "completion_tokens", "cost_micro_aud", "request_id", "cached",
                  "created_at", "completed_at"]

    def get_cached(self, analysis) -> bool:
        return analysis.cached_from_id is not None


class ConversationSerializer(serializers.ModelSerializer):
    qa_score = serializers.IntegerField(allow_null=True, read_only=True,
                                        help_text="The current analysis's QA score (null: none yet, or not sampled).")
    analysis_status = serializers.CharField(allow_null=True, read_only=True)

    class Meta:
        model = Conversation
        fields = ["id", "conversation_id", "key_id", "model", "channel", "language", "customer_id", "turn_count",
                  "sentiment_trail", "escalated", "escalation_reason", "opened_at", "closed_at", "metadata",
                  "sampled", "qa_score", "analysis_status"]


class ConversationDetailSerializer(ConversationSerializer):
    analyses = AnalysisSerializer(many=True, read_only=True)

    class Meta(ConversationSerializer.Meta):
        fields = [*ConversationSerializer.Meta.fields, "analyses"]


# --- views ---------------------------------------------------------------------------------------
class ConversationPagination(CursorPagination):
    """Keyset pages, newest first: a page costs the same however many conversations came before it."""

    ordering = ("-closed_at", "-id")
    page_size = 50
    max_page_size = 200
    page_size_query_param = "limit"

    def decode_cursor(self, request):
        # The cursor comes back from the client, who may forge it: a position that is no closing time would reach
        # the query and fail there (a 500). It is refused as any invalid cursor is.
        cursor = super().decode_cursor(request)
        if cursor is not None and cursor.position is not None:
            try:
                parsed = parse_datetime(cursor.position)
            except ValueError:
                parsed = None
            if parsed is None:
                raise NotFound(self.invalid_cursor_message)
        return cursor


class ConversationListView(ManagementView):
    actions = {"GET": Action.CONVERSATIONS_VIEW}
    serializer_class = ConversationSerializer
    pagination_class = ConversationPagination

    @extend_schema(operation_id="conversations_list",
                   summary="Closed conversations with their QA score, newest first (cursor pages)",
                   parameters=[ConversationFilterSerializer],
                   responses={200: ConversationSerializer(many=True), **_errors(400, 404, *COMMON)})
    def get(self, request):
        query = self.query(ConversationFilterSerializer)
        escalated = query.pop("escalated", None)
        filters = {k: v for k, v in query.items() if v is not None}
        if escalated is not None:
            filters["escalated"] = "yes" if escalated else "no"
        queryset = reads.conversations_for_tenant(tenant=self.access.tenant, **filters)
        page = self.paginate_queryset(queryset)
        return self.get_paginated_response(ConversationSerializer(page, many=True).data)


class ConversationDetailView(ManagementView):
    actions = {"GET": Action.CONVERSATIONS_VIEW}
    serializer_class = ConversationDetailSerializer

    @extend_schema(operation_id="conversations_retrieve",
                   summary="One closed conversation and its post-call analyses (summary, rubric scores, reasons)",
                   responses={200: ConversationDetailSerializer, **_errors(404, *COMMON)})
    def get(self, request, conversation_pk):
        conversation = reads.conversation_get(tenant=self.access.tenant, conversation_pk=conversation_pk)
        conversation = (reads.conversations_for_tenant(tenant=self.access.tenant)
                        .prefetch_related("analyses").get(pk=conversation.pk))
        return Response(ConversationDetailSerializer(conversation).data)
