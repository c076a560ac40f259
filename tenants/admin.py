"""Django's admin for tenants: for looking things up. Changes go through the console and the staff console,
whose services write the audit trail and publish to the data plane; so these pages are read-only."""

from __future__ import annotations

from django.contrib import admin

from tenants.models import ApiKey, Invitation, Membership, PolicyAcceptance, Tenant


class ReadOnlyAdmin(admin.ModelAdmin):
    def has_add_permission(self, request) -> bool:
        return False

    def has_change_permission(self, request, obj=None) -> bool:
        return False

    def has_delete_permission(self, request, obj=None) -> bool:
        return False


class MembershipInline(admin.TabularInline):
    model = Membership
    fields = ["user", "role", "created_at"]
    readonly_fields = fields
    extra = 0
    can_delete = False

    def has_add_permission(self, request, obj=None) -> bool:
        return False


@admin.register(Tenant)
class TenantAdmin(ReadOnlyAdmin):
    list_display = ["name", "slug", "status", "state", "created_at"]
    list_filter = ["status", "state"]
    search_fields = ["name", "slug", "abn", "billing_email"]
    inlines = [MembershipInline]


@admin.register(ApiKey)
class ApiKeyAdmin(ReadOnlyAdmin):
    list_display = ["name", "key_id", "tenant", "status", "created_at", "expires_at", "revoked_at"]
    list_filter = ["revoked_at"]
    search_fields = ["key_id", "name", "tenant__name"]
    exclude = ["secret_hash", "previous_secret_hash"]


@admin.register(Invitation)
class InvitationAdmin(ReadOnlyAdmin):
    list_display = ["email", "tenant", "role", "status", "created_at", "expires_at"]
    search_fields = ["email", "tenant__name"]
    exclude = ["token_hash"]


@admin.register(PolicyAcceptance)
class PolicyAcceptanceAdmin(ReadOnlyAdmin):
    list_display = ["user", "tenant", "terms_version", "privacy_version", "accepted_at"]
    search_fields = ["user__email", "tenant__name"]
