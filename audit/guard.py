"""The database's own refusal of UPDATE and DELETE on the audit trail (R-AUD-2), for PostgreSQL and SQLite.

One UPDATE is allowed per row: the sealer's, which sets ``seq``, ``prev_hash`` and ``hash`` on a row whose
``hash`` is still empty and changes nothing else. Every other UPDATE and every DELETE is refused. The triggers
are installed by migration ``audit.0003``; ``install``/``uninstall`` are here so that the one test that must
force an edit (to prove ``verify_audit`` finds it) turns the same triggers off and on.

Why hand-written triggers and not django-pgtrigger: pgtrigger only supports PostgreSQL, and the embedded default
runs on SQLite, which needs the same rule; one module holding both keeps them side by side (docs/audit.md).
TRUNCATE is not covered by row triggers: production revokes TRUNCATE (and trigger changes) from the
application's role, as it does DDL.
"""

from __future__ import annotations

from django.core.exceptions import ImproperlyConfigured

TABLE = "audit_auditentry"
# The columns the sealer sets; every other column must stay as inserted.
SEALED_COLUMNS = ("seq", "prev_hash", "hash")
_OTHER_COLUMNS = (
    "id", "created_at", "action", "actor_kind", "actor_id", "actor_label", "api_key_id", "tenant_id",
    "target_type", "target_id", "ip", "user_agent", "request_id", "data",
)
REFUSAL = "audit entries are append-only"

_PG_INSTALL = f"""
CREATE OR REPLACE FUNCTION audit_entry_append_only() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF TG_OP = 'UPDATE' AND OLD.hash = '' AND OLD.seq IS NULL AND NEW.hash <> '' AND NEW.seq IS NOT NULL
       AND (to_jsonb(NEW) - ARRAY['seq', 'prev_hash', 'hash']) = (to_jsonb(OLD) - ARRAY['seq', 'prev_hash', 'hash'])
    THEN
        RETURN NEW;
    END IF;
    RAISE EXCEPTION '{REFUSAL} (% refused on id %)', TG_OP, OLD.id USING ERRCODE = 'insufficient_privilege';
END
$$;
DROP TRIGGER IF EXISTS audit_entry_append_only ON {TABLE};
CREATE TRIGGER audit_entry_append_only BEFORE UPDATE OR DELETE ON {TABLE}
    FOR EACH ROW EXECUTE FUNCTION audit_entry_append_only();
"""
_PG_UNINSTALL = f"""
DROP TRIGGER IF EXISTS audit_entry_append_only ON {TABLE};
DROP FUNCTION IF EXISTS audit_entry_append_only();
"""

# SQLite's REPLACE conflict resolution (INSERT OR REPLACE, UPDATE OR REPLACE) deletes the row in the way without
# firing DELETE triggers (unless recursive_triggers is on), so a row may not take an existing row's id or seq:
# checked before the conflict is resolved. PostgreSQL has no REPLACE; its ON CONFLICT DO UPDATE fires the UPDATE
# trigger.
_SQLITE_SEAL_ONLY = " AND ".join(
    ["OLD.hash = ''", "OLD.seq IS NULL", "NEW.hash <> ''", "NEW.seq IS NOT NULL"]
    + [f'NEW."{c}" IS OLD."{c}"' for c in _OTHER_COLUMNS]
    + [f"NOT EXISTS (SELECT 1 FROM {TABLE} WHERE seq = NEW.seq)"]  # noqa: S608 (constant names)
)
_SQLITE_INSTALL = [
    f"""CREATE TRIGGER IF NOT EXISTS audit_entry_no_update BEFORE UPDATE ON {TABLE}
        WHEN NOT ({_SQLITE_SEAL_ONLY})
        BEGIN SELECT RAISE(ABORT, '{REFUSAL}'); END""",
    f"""CREATE TRIGGER IF NOT EXISTS audit_entry_no_delete BEFORE DELETE ON {TABLE}
        BEGIN SELECT RAISE(ABORT, '{REFUSAL}'); END""",
    f"""CREATE TRIGGER IF NOT EXISTS audit_entry_no_replace BEFORE INSERT ON {TABLE}
        WHEN EXISTS (SELECT 1 FROM {TABLE} WHERE id = NEW.id)
            OR (NEW.seq IS NOT NULL AND EXISTS (SELECT 1 FROM {TABLE} WHERE seq = NEW.seq))
        BEGIN SELECT RAISE(ABORT, '{REFUSAL}'); END""",  # noqa: S608 (constant names)
]
_SQLITE_UNINSTALL = [
    "DROP TRIGGER IF EXISTS audit_entry_no_update",
    "DROP TRIGGER IF EXISTS audit_entry_no_delete",
    "DROP TRIGGER IF EXISTS audit_entry_no_replace",
]


def statements(vendor: str, *, install: bool) -> list[str]:
    """The SQL that installs (or removes) the guard. Another database is refused: migrating the audit trail onto
    a database that can't refuse UPDATE and DELETE would leave it silently unprotected."""
    if vendor == "postgresql":
        return [_PG_INSTALL if install else _PG_UNINSTALL]
    if vendor == "sqlite":
        return list(_SQLITE_INSTALL if install else _SQLITE_UNINSTALL)
    raise ImproperlyConfigured(
        f"the audit trail must be append-only, and Wattle has no trigger for {vendor}: use PostgreSQL (or SQLite "
        "for development)"
    )


def install(connection) -> None:
    with connection.cursor() as cursor:
        for sql in statements(connection.vendor, install=True):
            cursor.execute(sql)


def uninstall(connection) -> None:
    with connection.cursor() as cursor:
        for sql in statements(connection.vendor, install=False):
            cursor.execute(sql)
