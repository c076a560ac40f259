"""Who may do what in a tenant: the permission matrix, as data, in one place.

Views, the management API and templates all ask ``can(role, action)``; nothing else decides. The matrix is
reproduced in docs/accounts.md (a test keeps the two in step).
"""

from __future__ import annotations

from enum import StrEnum

from tenants.models import ApiKey, Role

# Not membership roles. SUPPORT: what platform staff may do inside a tenant during an audited "act as"
# session. API_KEY: what a key with management scopes may do (its scopes narrow it further by method).
SUPPORT = "support"
API_KEY = "api_key"


class Action(StrEnum):
    TENANT_VIEW = "tenant.view"
    TENANT_UPDATE = "tenant.update"
    MEMBERS_VIEW = "members.view"
    MEMBERS_CHANGE_ROLE = "members.change_role"
    MEMBERS_REMOVE = "members.remove"
    MEMBERS_MANAGE_OWNERS = "members.manage_owners"
    OWNERSHIP_TRANSFER = "ownership.transfer"
    INVITATIONS_VIEW = "invitations.view"
    INVITATIONS_MANAGE = "invitations.manage"
    KEYS_VIEW = "keys.view"
    KEYS_CREATE = "keys.create"
    KEYS_ROTATE = "keys.rotate"
    KEYS_REVOKE = "keys.revoke"
    KEYS_MANAGEMENT_SCOPES = "keys.management_scopes"
    KEYS_LIMITS = "keys.limits"
    USAGE_VIEW = "usage.view"
    LIMITS_VIEW = "limits.view"
    PLAYGROUND_USE = "playground.use"
    BILLING_VIEW = "billing.view"
    BILLING_MANAGE = "billing.manage"
    AUDIT_VIEW = "audit.view"
    CONVERSATIONS_VIEW = "conversations.view"
    PRIVACY_REQUESTS_MANAGE = "privacy_requests.manage"
    TRANSCRIPTS_VIEW = "transcripts.view"
    TRANSCRIPTS_DESTROY = "transcripts.destroy"


_ALL_ROLES = (Role.OWNER, Role.ADMIN, Role.DEVELOPER, Role.BILLING, Role.AGENT)

MATRIX: dict[Action, frozenset[str]] = {
    Action.TENANT_VIEW: frozenset({*_ALL_ROLES, SUPPORT, API_KEY}),
    Action.TENANT_UPDATE: frozenset({Role.OWNER, Role.ADMIN}),
    Action.MEMBERS_VIEW: frozenset({Role.OWNER, Role.ADMIN, Role.DEVELOPER, Role.BILLING, SUPPORT, API_KEY}),
    Action.MEMBERS_CHANGE_ROLE: frozenset({Role.OWNER, Role.ADMIN}),
    Action.MEMBERS_REMOVE: frozenset({Role.OWNER, Role.ADMIN}),
    Action.MEMBERS_MANAGE_OWNERS: frozenset({Role.OWNER}),
    Action.OWNERSHIP_TRANSFER: frozenset({Role.OWNER}),
    Action.INVITATIONS_VIEW: frozenset({Role.OWNER, Role.ADMIN, SUPPORT, API_KEY}),
    Action.INVITATIONS_MANAGE: frozenset({Role.OWNER, Role.ADMIN, API_KEY}),
    Action.KEYS_VIEW: frozenset({Role.OWNER, Role.ADMIN, Role.DEVELOPER, SUPPORT, API_KEY}),
    Action.KEYS_CREATE: frozenset({Role.OWNER, Role.ADMIN, Role.DEVELOPER, API_KEY}),
    Action.KEYS_ROTATE: frozenset({Role.OWNER, Role.ADMIN, Role.DEVELOPER, API_KEY}),
    # Support staff may revoke a leaked key during an incident; it never creates or sees a secret.
    Action.KEYS_REVOKE: frozenset({Role.OWNER, Role.ADMIN, Role.DEVELOPER, SUPPORT, API_KEY}),
    # Management scopes reach members and invitations, so only the roles that manage those may give them to a
    # key, or rotate (and so obtain), change or revoke a key that has them: otherwise a developer could mint or
    # take over a key that invites an admin. Support may still revoke a leaked one (revoking is its only key
    # action); a management key may not, so one leaked key cannot take over or switch off the others.
    Action.KEYS_MANAGEMENT_SCOPES: frozenset({Role.OWNER, Role.ADMIN, SUPPORT}),
    # A key's own limits can only narrow the organisation's (the service refuses more), so the roles that run
    # the organisation set them; a management key may too, as it may when creating a key.
    Action.KEYS_LIMITS: frozenset({Role.OWNER, Role.ADMIN, API_KEY}),
    Action.USAGE_VIEW: frozenset({Role.OWNER, Role.ADMIN, Role.DEVELOPER, Role.BILLING, SUPPORT, API_KEY}),
    Action.LIMITS_VIEW: frozenset({Role.OWNER, Role.ADMIN, Role.DEVELOPER, Role.BILLING, SUPPORT, API_KEY}),
    Action.PLAYGROUND_USE: frozenset({Role.OWNER, Role.ADMIN, Role.DEVELOPER, Role.AGENT}),
    # The bill (plan, spend, invoices) is for the roles that run or pay for the organisation, and for support
    # staff answering "why is my bill this much?". Developers and agents see usage and limits, not money: an
    # invoice names the customer's ABN, address and payment state, which their work does not need. A management
    # key may read it too (a key with those scopes is only ever given by an owner or admin).
    Action.BILLING_VIEW: frozenset({Role.OWNER, Role.ADMIN, Role.BILLING, SUPPORT, API_KEY}),
    Action.BILLING_MANAGE: frozenset({Role.OWNER, Role.BILLING}),
    # The organisation's audit trail (who signed in, changed roles, keys and settings) is for the roles that run
    # it; staff read every tenant's trail from the staff console instead.
    Action.AUDIT_VIEW: frozenset({Role.OWNER, Role.ADMIN}),
    # Closed conversations and their post-call analyses (summaries, QA scores and reasons) are about the tenant's
    # customers and about its agents' work (a QA score can inform an agent's performance review): for the roles that
    # run the contact centre, and a management key. Not agents (one agent would read every customer's summary and
    # every colleague's scores), developers or billing (their work needs usage, not customers' conversations), nor
    # support staff acting as the tenant (a summary is derived content, R-SEC-3).
    Action.CONVERSATIONS_VIEW: frozenset({Role.OWNER, Role.ADMIN, API_KEY}),
    # Individuals' requests (APP 12/13) open and carry out a copy or an erasure of an end customer's records:
    # for the roles that answer for the organisation's privacy, and for a management key (a tenant's CRM files
    # them). Support staff use the staff console's own page, which never shows a copy's content.
    Action.PRIVACY_REQUESTS_MANAGE: frozenset({Role.OWNER, Role.ADMIN, API_KEY}),
    # Kept transcripts (prompts and replies, decrypted on view, every view audited) are the organisation's content:
    # for the roles that answer for its privacy. Not support staff acting as the tenant: platform staff read content
    # only under break-glass access from the staff console (R-SEC-3).
    Action.TRANSCRIPTS_VIEW: frozenset({Role.OWNER, Role.ADMIN}),
    # Destroying every kept transcript at once can't be undone: the owner's decision.
    Action.TRANSCRIPTS_DESTROY: frozenset({Role.OWNER}),
}

# Roles whose holders must protect their account with a second factor before any tenant page.
MFA_REQUIRED_ROLES = frozenset({Role.OWNER, Role.ADMIN})

# Scopes an API key needs on the management API, by HTTP method.
SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})


def can(role: str | None, action: Action | str) -> bool:
    if role is None:
        return False
    return role in MATRIX.get(Action(action), frozenset())


def actions_for(role: str | None) -> frozenset[str]:
    """Every action a role may take, e.g. for templates: ``{% if "keys.create" in perms_tenant %}``."""
    return frozenset(str(action) for action, roles in MATRIX.items() if role in roles)


# What a role needs, beyond the key action itself, to act on a key holding each scope. Every scope a key can
# hold is listed, so a scope added to ``ApiKey.Scope`` but not here is refused to everyone until it is.
SCOPE_ACTIONS: dict[str, Action | None] = {
    ApiKey.Scope.INFERENCE: None,
    ApiKey.Scope.MANAGEMENT_READ: Action.KEYS_MANAGEMENT_SCOPES,
    ApiKey.Scope.MANAGEMENT_WRITE: Action.KEYS_MANAGEMENT_SCOPES,
}

# The actions that create or change a key (``may_manage_key`` governs them).
KEY_ACTIONS = (Action.KEYS_CREATE, Action.KEYS_ROTATE, Action.KEYS_LIMITS, Action.KEYS_REVOKE)


def grantable_scopes(role: str | None) -> frozenset[str]:
    """The scopes a role may put on a key, and so the only scopes of the keys it may rotate, change or revoke."""
    return frozenset(scope for scope, needs in SCOPE_ACTIONS.items() if needs is None or can(role, needs))


def may_manage_key(role: str | None, action: Action | str, scopes) -> bool:
    """May ``role`` take the key ``action`` (create, rotate, change limits, revoke) on a key with ``scopes``?

    Only if the matrix allows the action and the role may grant every one of the key's scopes: a member never
    obtains (by creating or rotating), reshapes or switches off a key more powerful than their role."""
    return can(role, action) and set(scopes) <= grantable_scopes(role)


def key_actions(role: str | None, scopes) -> frozenset[str]:
    """The key actions ``role`` may take on a key with ``scopes``, e.g. for its buttons in templates."""
    return frozenset(str(action) for action in KEY_ACTIONS if may_manage_key(role, action, scopes))


def assignable_roles(role: str | None) -> list[str]:
    """Roles this role may hand out through invitations or role changes."""
    if can(role, Action.MEMBERS_MANAGE_OWNERS):
        return [r.value for r in _ALL_ROLES]
    if can(role, Action.MEMBERS_CHANGE_ROLE) or can(role, Action.INVITATIONS_MANAGE):
        return [r.value for r in _ALL_ROLES if r != Role.OWNER]
    return []


def required_scope(method: str) -> str:
    return "management:read" if method.upper() in SAFE_METHODS else "management:write"
