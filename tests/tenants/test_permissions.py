"""The permission matrix is data in one place; the documented table is the same matrix."""

from __future__ import annotations

from pathlib import Path

from tenants.models import Role
from tenants.permissions import API_KEY, MATRIX, SUPPORT, Action, actions_for, assignable_roles, can, required_scope

DOC = Path(__file__).resolve().parents[2] / "docs" / "accounts.md"
COLUMNS = [Role.OWNER, Role.ADMIN, Role.DEVELOPER, Role.BILLING, Role.AGENT, SUPPORT, API_KEY]


def _documented_matrix() -> dict[str, set[str]]:
    rows = {}
    for line in DOC.read_text().splitlines():
        if not line.startswith("| `"):
            continue
        cells = [c.strip() for c in line.strip("|").split("|")]
        action, marks = cells[0].strip("`"), cells[2:]
        assert len(marks) == len(COLUMNS), line
        rows[action] = {str(role) for role, mark in zip(COLUMNS, marks, strict=True) if mark == "✓"}
    return rows


def test_documented_matrix_is_the_enforced_matrix():
    documented = _documented_matrix()
    enforced = {str(action): {str(r) for r in roles} for action, roles in MATRIX.items()}
    assert documented == enforced


def test_every_action_is_in_the_matrix():
    assert set(MATRIX) == set(Action)


def test_can_and_actions_for_agree():
    for role in COLUMNS:
        assert actions_for(role) == {str(a) for a in Action if can(role, a)}
    assert not can(None, Action.TENANT_VIEW)
    assert actions_for("nobody") == frozenset()


def test_who_can_hand_out_which_role():
    assert assignable_roles(Role.OWNER) == [r.value for r in Role]
    assert Role.OWNER not in assignable_roles(Role.ADMIN) and Role.ADMIN in assignable_roles(Role.ADMIN)
    assert assignable_roles(Role.DEVELOPER) == []


def test_scopes_by_method():
    assert required_scope("GET") == "management:read"
    assert required_scope("head") == "management:read"
    assert all(required_scope(m) == "management:write" for m in ("POST", "PATCH", "PUT", "DELETE"))
