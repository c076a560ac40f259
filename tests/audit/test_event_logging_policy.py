"""R-AUD-4 and the event-logging policy (ISM-0580): the policy in docs/audit.md names where events are kept and for
how long, names every action the product records (read from the code, so a new action without a line in the
policy fails here), and the security events R-AUD-4 lists each have an action that the code records."""

from __future__ import annotations

import ast
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
APPS = ("audit", "billing", "core", "inference", "portal", "tenants")
DOTTED = re.compile(r"^[a-z_]+(\.[a-z_{}]+)+$")

# R-AUD-4's list, each with the actions that record it.
SECURITY_EVENTS = {
    "login success": ["auth.login"],
    "login failure": ["auth.login_failed"],
    "MFA success and failure": ["mfa.use", "mfa.fail"],
    "MFA changes": ["mfa.add", "mfa.remove", "mfa.reset"],
    "key create, rotate, revoke": ["api_key.create", "api_key.rotate", "api_key.revoke"],
    "role and membership changes": ["member.role_change", "member.add", "member.remove", "invitation.create"],
    "tenant setting changes (retention, redaction)": ["tenant.retention.update", "tenant.redaction.update"],
    "exports": ["audit.exported", "privacy_request.exported", "incident.customers_exported"],
    "deletions": ["retention.destroyed", "retention.destroyed_now", "privacy_request.erased"],
    "webhook signature failures": ["billing.webhook.signature_failed"],
    "staff act-as sessions": ["staff.act_as.start", "staff.act_as.end"],
    "suspensions": ["tenant.status.{status}"],
}


def _text(node: ast.expr) -> str | None:
    if isinstance(node, ast.Constant) and isinstance(node.value, str):
        return node.value
    if isinstance(node, ast.JoinedStr):
        return "".join(part.value if isinstance(part, ast.Constant) else "{" + ast.unparse(part.value) + "}"
                       for part in node.values)
    return None


def recorded_actions() -> dict[str, str]:
    """Every audit action written in the product: `action=` arguments (to record() and the helpers that pass it
    on), the first argument of the retention job's counter, and module constants named *ACTION."""
    found: dict[str, str] = {}
    for app in APPS:
        for path in sorted((ROOT / app).rglob("*.py")):
            if "migrations" in path.parts or "simulator" in path.parts:
                continue
            for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
                values: list[ast.expr] = []
                if isinstance(node, ast.Call):
                    values += [kw.value for kw in node.keywords if kw.arg == "action"]
                    if getattr(node.func, "id", None) == "_audit_counts" and node.args:
                        values.append(node.args[0])
                if isinstance(node, ast.Assign) and any(
                        isinstance(t, ast.Name) and t.id.endswith("ACTION") for t in node.targets):
                    values.append(node.value)
                for value in values:
                    for choice in (value.body, value.orelse) if isinstance(value, ast.IfExp) else (value,):
                        text = _text(choice)
                        if text and DOTTED.match(text):
                            found.setdefault(text, path.relative_to(ROOT).as_posix())
    return found


def _policy() -> str:
    return (ROOT / "docs" / "audit.md").read_text().split("## Event-logging policy", 1)[1]


def test_the_collector_finds_the_actions_it_should():
    actions = recorded_actions()
    assert len(actions) >= 80
    assert {"auth.login", "audit.segment.sealed", "access.batch", "adm.escalation", "retention.destroyed",
            "privacy_request.erased", "tenant.status.{status}", "plan.create", "plan.update"} <= set(actions)


def test_the_policy_names_every_recorded_action():
    policy = _policy()
    unnamed = {action: path for action, path in recorded_actions().items() if f"`{action}`" not in policy}
    assert unnamed == {}


def test_every_security_event_of_r_aud_4_is_recorded_and_named():
    actions, policy = recorded_actions(), _policy()
    for event, names in SECURITY_EVENTS.items():
        for name in names:
            assert name in actions, f"{event}: the code records no {name!r}"
            assert f"`{name}`" in policy, f"{event}: the policy doesn't name {name!r}"


def test_the_policy_says_where_each_kind_of_record_is_kept_and_for_how_long():
    policy = _policy()
    table = policy.split("\n\n", 2)[1]
    rows = [line for line in table.splitlines() if line.startswith("|")][2:]
    assert len(rows) >= 5 and all(len([c for c in row.split("|")[1:-1] if c.strip()]) == 3 for row in rows)
    for where in ("audit_auditentry", "S3, ap-southeast-2", "billing_usageevent", "audit_transcript"):
        assert where in table
    assert "AUDIT_ARCHIVE_RETENTION_DAYS" in table and "7 years" in table
    assert "never in the audit trail" in table  # end-customer content
