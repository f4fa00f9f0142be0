"""Rewrite waiters' match keys as canonical JSON, so ``1`` and ``1.0`` find each other.

Waiters stored before this wrote ``json.dumps`` text (``1.0``); an incoming ``1`` now
looks up ``canonical_json(1)`` == ``1``, so old rows are rewritten to match.
"""

import json
import logging

from django.db import DEFAULT_DB_ALIAS, migrations, router

from django_workflows.expressions import canonical_json

logger = logging.getLogger("django_workflows.migrations")
BATCH = 1000


def canonicalize_match_values(apps, schema_editor):
    Waiter = apps.get_model("django_workflows", "Waiter")
    if schema_editor is not None:
        db = schema_editor.connection.alias
    else:  # called directly (tests): where the router puts the table
        db = router.db_for_write(Waiter) or DEFAULT_DB_ALIAS
    # In pk order: SQLite does not isolate this read from the updates made during it,
    # and a table scan in rowid order neither skips rows nor is disturbed by them.
    rows = Waiter.objects.using(db).exclude(match_value="").order_by("pk").only("pk", "match_value")
    changed = []
    for waiter in rows.iterator(chunk_size=BATCH):
        text = _canonical_text(waiter.match_value)
        if text is not None and text != waiter.match_value:
            waiter.match_value = text
            changed.append(waiter)
        if len(changed) >= BATCH:
            Waiter.objects.using(db).bulk_update(changed, ["match_value"])
            changed = []
    if changed:
        Waiter.objects.using(db).bulk_update(changed, ["match_value"])


def _canonical_text(text: str):
    """The canonical text, or None for values that are no JSON (the missing-field marker)."""
    try:
        value = json.loads(text)
    except ValueError:
        return None
    return canonical_json(value)


class Migration(migrations.Migration):

    dependencies = [
        ("django_workflows", "0003_exact_json"),
    ]

    operations = [
        migrations.RunPython(canonicalize_match_values, migrations.RunPython.noop),
    ]
