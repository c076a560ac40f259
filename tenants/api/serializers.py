"""Shapes of the management API. Serializers validate and present; services change state."""

from __future__ import annotations

from datetime import date, timedelta
from decimal import Decimal

from django.utils import timezone
from drf_spectacular.utils import extend_schema_field
from rest_framework import serializers

from core import quotas
from tenants.forms import check_served, one_line, parse_models
from tenants.models import ApiKey, Invitation, Membership, Role, Tenant
from tenants.services import MAX_ROTATION_GRACE
from tenants.validators import validate_abn


class ErrorBodySerializer(serializers.Serializer):
    message = serializers.CharField()
    type = serializers.CharField()
    code = serializers.CharField(allow_null=True)
    param = serializers.CharField(allow_null=True)


class ErrorSerializer(serializers.Serializer):
    error = ErrorBodySerializer()


class TenantSerializer(serializers.ModelSerializer):
    class Meta:
        model = Tenant
        fields = ["id", "slug", "name", "status", "status_reason", "abn", "billing_email", "state", "created_at"]
        read_only_fields = fields


class TenantUpdateSerializer(serializers.Serializer):
    name = serializers.CharField(max_length=200, required=False)
    billing_email = serializers.EmailField(required=False)
    abn = serializers.CharField(max_length=20, required=False, allow_blank=True)
    state = serializers.ChoiceField(choices=Tenant.State.choices, required=False, allow_blank=True)

    def validate_name(self, value: str) -> str:
        if not one_line(value):
            raise serializers.ValidationError("Enter the organisation's name.")
        return one_line(value)

    def validate_abn(self, value: str) -> str:
        from django.core.exceptions import ValidationError

        try:
            return validate_abn(value)
        except ValidationError as exc:
            raise serializers.ValidationError(exc.messages[0], code=exc.code) from None


class MemberSerializer(serializers.ModelSerializer):
    email = serializers.EmailField(source="user.email", read_only=True)
    joined_at = serializers.DateTimeField(source="created_at", read_only=True)

    class Meta:
        model = Membership
        fields = ["id", "email", "role", "joined_at"]
        read_only_fields = fields


class MemberUpdateSerializer(serializers.Serializer):
    role = serializers.ChoiceField(choices=Role.choices)


class MemberFilterSerializer(serializers.Serializer):
    role = serializers.ChoiceField(choices=Role.choices, required=False)


class InvitationSerializer(serializers.ModelSerializer):
    status = serializers.CharField(read_only=True)
    invited_by = serializers.SerializerMethodField()

    class Meta:
        model = Invitation
        fields = ["id", "email", "role", "status", "invited_by", "created_at", "expires_at", "accepted_at"]
        read_only_fields = fields

    @extend_schema_field(serializers.EmailField(allow_null=True))
    def get_invited_by(self, obj: Invitation) -> str | None:
        return obj.invited_by.email if obj.invited_by else None


class InvitationCreateSerializer(serializers.Serializer):
    email = serializers.EmailField()
    role = serializers.ChoiceField(choices=Role.choices)


INVITATION_STATUSES = ["pending", "accepted", "revoked", "expired"]


class InvitationFilterSerializer(serializers.Serializer):
    status = serializers.ChoiceField(choices=INVITATION_STATUSES, required=False)


def _limit_serializer_field(kind: quotas.LimitKind) -> serializers.Field:
    if kind.money:
        return serializers.DecimalField(max_digits=12, decimal_places=2, min_value=Decimal("0.01"), required=False,
                                        allow_null=True)
    return serializers.IntegerField(min_value=1, max_value=kind.maximum, required=False, allow_null=True)


# A field per kind of ``core.quotas.KINDS``, declared through the serializer metaclass.
KeyLimitsSerializer = serializers.SerializerMetaclass(
    "KeyLimitsSerializer", (serializers.Serializer,),
    {"__module__": __name__, "__qualname__": "KeyLimitsSerializer",
     **{kind.field: _limit_serializer_field(kind) for kind in quotas.KINDS}},
)


class ApiKeySerializer(serializers.ModelSerializer):
    prefix = serializers.CharField(read_only=True)
    status = serializers.CharField(read_only=True)
    created_by = serializers.SerializerMethodField()
    last_used_at = serializers.SerializerMethodField()
    limits = serializers.SerializerMethodField()

    class Meta:
        model = ApiKey
        fields = ["key_id", "prefix", "name", "scopes", "allowed_models", "status", "created_by", "created_at",
                  "last_used_at", "expires_at", "revoked_at", "rotated_at", "previous_secret_expires_at", "limits"]
        read_only_fields = fields

    @extend_schema_field(serializers.EmailField(allow_null=True))
    def get_created_by(self, obj: ApiKey) -> str | None:
        return obj.created_by.email if obj.created_by else None

    @extend_schema_field(serializers.DateTimeField(allow_null=True))
    def get_last_used_at(self, obj: ApiKey):
        value = getattr(obj, "last_used_at", None)
        return serializers.DateTimeField().to_representation(value) if value else None

    @extend_schema_field(KeyLimitsSerializer)
    def get_limits(self, obj: ApiKey) -> dict:
        return KeyLimitsSerializer({name: getattr(obj, name) for name in ApiKey.LIMIT_FIELDS}).data


class ApiKeyWithSecretSerializer(ApiKeySerializer):
    secret = serializers.SerializerMethodField(help_text="The full key. Shown this once; store it now.")

    class Meta(ApiKeySerializer.Meta):
        fields = [*ApiKeySerializer.Meta.fields, "secret"]
        read_only_fields = fields

    def get_secret(self, obj) -> str:
        return self.context["secret"]


class ApiKeyCreateSerializer(serializers.Serializer):
    name = serializers.CharField(max_length=100)
    scopes = serializers.ListField(child=serializers.ChoiceField(choices=ApiKey.Scope.choices), min_length=1,
                                   max_length=3, default=lambda: [ApiKey.Scope.INFERENCE.value])
    allowed_models = serializers.ListField(child=serializers.CharField(max_length=200), max_length=50,
                                           required=False, default=list)
    expires_at = serializers.DateTimeField(required=False, allow_null=True)
    limits = KeyLimitsSerializer(required=False)

    def validate_name(self, value: str) -> str:
        if not value.strip():
            raise serializers.ValidationError("Give the key a name.")
        return value.strip()

    def validate_allowed_models(self, value: list[str]) -> list[str]:
        from django.core.exceptions import ValidationError

        try:
            return check_served(parse_models("\n".join(value)))
        except ValidationError as exc:
            raise serializers.ValidationError(exc.messages[0]) from None

    def validate_expires_at(self, value):
        if value is not None and value <= timezone.now():
            raise serializers.ValidationError("The expiry must be in the future.")
        return value


class ApiKeyFilterSerializer(serializers.Serializer):
    status = serializers.ChoiceField(choices=["active", "revoked", "expired"], required=False)
    scope = serializers.ChoiceField(choices=ApiKey.Scope.choices, required=False)


class ApiKeyRotateSerializer(serializers.Serializer):
    grace_seconds = serializers.IntegerField(
        min_value=0, max_value=int(MAX_ROTATION_GRACE.total_seconds()), default=86400,
        help_text="How long the old secret keeps working (0: it stops now; at most 30 days).",
    )

    def grace(self) -> timedelta:
        return timedelta(seconds=self.validated_data["grace_seconds"])


USAGE_FIRST_DAY = date(2000, 1, 1)
USAGE_LAST_DAY = date(2999, 12, 31)


class UsageQuerySerializer(serializers.Serializer):
    since = serializers.DateField(required=False, help_text="First day (Sydney time), default 30 days ago.")
    until = serializers.DateField(required=False, help_text="Last day (Sydney time), default today.")

    def validate(self, attrs):
        since, until = attrs.get("since"), attrs.get("until")
        for name, day in (("since", since), ("until", until)):
            # Days at the calendar's ends overflow when turned into Sydney times.
            if day is not None and not USAGE_FIRST_DAY <= day <= USAGE_LAST_DAY:
                raise serializers.ValidationError(
                    {name: f"Give a day between {USAGE_FIRST_DAY.isoformat()} and {USAGE_LAST_DAY.isoformat()}."})
        if since and until and since > until:
            raise serializers.ValidationError({"since": "`since` must be on or before `until`."})
        # ``since`` alone runs to today: held to the same bound, as the summary reads usage events.
        if since and ((until or timezone.localdate()) - since).days > 366:
            raise serializers.ValidationError({"since": "Ask for at most 366 days at a time."})
        return attrs


class UsageRowSerializer(serializers.Serializer):
    requests = serializers.IntegerField()
    prompt_tokens = serializers.IntegerField()
    completion_tokens = serializers.IntegerField()
    total_tokens = serializers.IntegerField()


class UsageDaySerializer(UsageRowSerializer):
    day = serializers.DateField()


class UsageModelSerializer(UsageRowSerializer):
    model = serializers.CharField()


class UsageKeySerializer(UsageRowSerializer):
    key_id = serializers.CharField()


class UsageSummarySerializer(serializers.Serializer):
    since = serializers.DateField()
    until = serializers.DateField()
    totals = UsageRowSerializer()
    by_day = UsageDaySerializer(many=True)
    by_model = UsageModelSerializer(many=True)
    by_key = UsageKeySerializer(many=True)


class ApiKeyUpdateSerializer(serializers.Serializer):
    limits = KeyLimitsSerializer(
        help_text="The key's own limits to change: a value sets one (never above the organisation's effective "
                  "limit), `null` clears one (the organisation's applies), a field left out stays as it is.",
    )


# --- limits and live quota -------------------------------------------------------------------------
METER_SOURCES = [
    ("plan", "the tenant's plan"),
    ("override", "set for the organisation by Wattle"),
    ("key", "the key's own limit"),
    ("capped", "the organisation's limit, lower than the key's own"),
]


class MeterSerializer(serializers.Serializer):
    limit = serializers.IntegerField(allow_null=True, help_text="`null`: no limit of this kind.")
    source = serializers.ChoiceField(choices=METER_SOURCES, allow_null=True, source="source_or_none",
                                     help_text="Where the limit comes from; `null` when there is none.")
    used = serializers.IntegerField(help_text="Counted in the current window (requests in flight for "
                                              "`concurrent`).")
    remaining = serializers.IntegerField(allow_null=True)
    resets_at = serializers.DateTimeField(allow_null=True, help_text="When the window ends (Sydney time); `null` "
                                                                     "for `concurrent`.")


class SpendMeterSerializer(MeterSerializer):
    limit = serializers.DecimalField(max_digits=14, decimal_places=2, allow_null=True, help_text="AUD.")
    used = serializers.DecimalField(max_digits=14, decimal_places=2, help_text="AUD.")
    remaining = serializers.DecimalField(max_digits=14, decimal_places=2, allow_null=True, help_text="AUD.")


MetersSerializer = serializers.SerializerMetaclass(
    "MetersSerializer", (serializers.Serializer,),
    {"__module__": __name__, "__qualname__": "MetersSerializer",
     **{kind.name: (SpendMeterSerializer if kind.money else MeterSerializer)(help_text=kind.help)
        for kind in quotas.KINDS}},
)


class PlanBriefSerializer(serializers.Serializer):
    slug = serializers.CharField()
    name = serializers.CharField()
    is_default = serializers.BooleanField()


class KeyQuotaSerializer(serializers.Serializer):
    key_id = serializers.CharField(source="api_key.key_id")
    name = serializers.CharField(source="api_key.name")
    counted = serializers.BooleanField(
        help_text="Whether the key is counted on its own. Only keys with limits of their own are; the others "
                  "share the organisation's limits, and their `used` values are 0.",
    )
    limits = MetersSerializer(source="meters_by_kind")


class LimitsReportSerializer(serializers.Serializer):
    as_of = serializers.DateTimeField(source="windows.now")
    plan = PlanBriefSerializer(allow_null=True)
    limits = MetersSerializer(source="meters_by_kind", help_text="The organisation's effective limits and use.")
    keys = KeyQuotaSerializer(many=True, help_text="Active keys, newest first (at most 100).")
