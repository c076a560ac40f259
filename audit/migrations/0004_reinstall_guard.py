"""Install the append-only triggers again, as ``audit.guard`` now has them: a database migrated to 0003 before
the guard refused SQLite's REPLACE (which deletes the row in its way without firing DELETE triggers) gets that
refusal too. Dropping and creating them in one migration leaves no moment without them."""

from django.db import migrations

from audit import guard


def reinstall_guard(apps, schema_editor):
    vendor = schema_editor.connection.vendor
    with schema_editor.connection.cursor() as cursor:
        for sql in [*guard.statements(vendor, install=False), *guard.statements(vendor, install=True)]:
            cursor.execute(sql)


class Migration(migrations.Migration):
    dependencies = [
        ("audit", "0003_audit_chain"),
    ]

    operations = [
        migrations.RunPython(reinstall_guard, migrations.RunPython.noop),
    ]
