"""Django's admin: for looking things up. Changes go through the console and the staff console, whose services
write the audit trail and publish to the data plane; so every admin page is read-only, ours and the libraries'
(users and their staff or superuser flags, MFA authenticators, email addresses, sessions, periodic tasks):
an edit there would be a change with no audit entry."""

from __future__ import annotations

from django.contrib import admin

from tenants.models import ApiKey, Invitation, Membership, PolicyAcceptance, SupportSession, Tenant


class ReadOnlyAdminMixin:
    """No adding, changing or deleting, and no bulk actions (a library's action may change rows without any
    of those permissions), even for superusers."""

    def has_add_permission(self, request, *args) -> bool:
        return False

    def has_change_permission(self, request, obj=None) -> bool:
        return False

    def has_delete_permission(self, request, obj=None) -> bool:
        return False

    def get_actions(self, request) -> dict:
        return {}


class ReadOnlyAdmin(ReadOnlyAdminMixin, admin.ModelAdmin):
    pass


def make_read_only(site: admin.AdminSite) -> None:
    """Re-register every model of ``site`` that is still editable with a read-only subclass of its admin, so
    the libraries' admin pages keep their lists and filters but lose their forms. Run once every app's admin
    module is loaded (``TenantsConfig.ready``)."""
    for model, model_admin in list(site._registry.items()):
        if isinstance(model_admin, ReadOnlyAdminMixin):
            continue
        admin_class = type(model_admin)
        site.unregister(model)
        site.register(model, type(f"ReadOnly{admin_class.__name__}", (ReadOnlyAdminMixin, admin_class), {}))


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


@admin.register(SupportSession)
class SupportSessionAdmin(ReadOnlyAdmin):
    list_display = ["staff", "tenant", "started_at", "expires_at", "ended_at", "end"]
    list_filter = ["end"]
    search_fields = ["staff__email", "tenant__name", "reason"]
