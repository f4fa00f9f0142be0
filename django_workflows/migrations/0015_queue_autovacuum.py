"""Vacuum the queue table by the number of dead rows, not a fifth of its size.

Every claim, lease renewal and checkpoint rewrites a queue row. With PostgreSQL's default
(``autovacuum_vacuum_scale_factor`` 0.2) a queue holding a million sleeping runs would
gather 200,000 dead rows before a vacuum, and every claim would step over them. PostgreSQL
only: other databases have no such setting.
"""

from django.db import migrations

TABLE = "django_workflows_queue"
SETTINGS = (
    "autovacuum_vacuum_scale_factor = 0.01, autovacuum_vacuum_threshold = 1000, "
    "autovacuum_analyze_scale_factor = 0.02"
)


def set_autovacuum(apps, schema_editor):
    if schema_editor.connection.vendor == "postgresql":
        schema_editor.execute(f"ALTER TABLE {TABLE} SET ({SETTINGS})")


def reset_autovacuum(apps, schema_editor):
    if schema_editor.connection.vendor == "postgresql":
        schema_editor.execute(
            f"ALTER TABLE {TABLE} RESET (autovacuum_vacuum_scale_factor, autovacuum_vacuum_threshold, "
            "autovacuum_analyze_scale_factor)"
        )


class Migration(migrations.Migration):

    dependencies = [
        ('django_workflows', '0014_queue_indexes_where_set'),
    ]

    operations = [
        migrations.RunPython(set_autovacuum, reset_autovacuum, elidable=False),
    ]
