"""System checks for misconfiguration (``manage.py check``)."""

from __future__ import annotations

import math
from typing import Any

from django.conf import settings
from django.core.checks import Error, Tags, Warning, register

from . import conf

# Set by ``runworkers --processes N`` before Django runs the checks.
requested_processes = 1


@register(Tags.compatibility)
def check_settings(app_configs: Any = None, **kwargs: Any) -> list:
    problems: list = []
    user = getattr(settings, "DJANGO_WORKFLOWS", {})
    if not isinstance(user, dict):
        return [Error("DJANGO_WORKFLOWS must be a dict.", id="django_workflows.E001")]
    for key in user:
        if key not in conf.DEFAULTS:
            problems.append(
                Error(
                    f"DJANGO_WORKFLOWS has an unknown key {key!r}.",
                    hint=f"Known keys: {', '.join(sorted(conf.DEFAULTS))}.",
                    id="django_workflows.E002",
                )
            )
    alias = conf.database()
    if alias not in settings.DATABASES:
        problems.append(
            Error(
                f"DJANGO_WORKFLOWS['DATABASE'] is {alias!r}, which is not in DATABASES.",
                id="django_workflows.E003",
            )
        )
        return problems
    for key in (
        "LEASE_SECONDS", "POLL_INTERVAL", "SHUTDOWN_GRACE_SECONDS", "CONCURRENCY", "STARTUP_TIMEOUT",
        "MAX_EVENT_BYTES", "MAX_STEP_OUTPUT_BYTES", "MAX_STEPS_PER_RUN",
    ):
        value = conf.get(key)
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value <= 0:
            problems.append(
                Error(f"DJANGO_WORKFLOWS[{key!r}] must be a finite positive number, got {value!r}.", id="django_workflows.E004")
            )
    for key in ("NOTIFY", "PREPARED_STATEMENTS"):
        if not isinstance(conf.get(key), bool):
            problems.append(
                Error(f"DJANGO_WORKFLOWS[{key!r}] must be True or False, got {conf.get(key)!r}.", id="django_workflows.E006")
            )
    database = settings.DATABASES[alias]
    if database.get("ENGINE", "").endswith("sqlite3"):
        problems.extend(_sqlite_checks(database))
    return problems


def _sqlite_checks(database: dict) -> list:
    problems = []
    if requested_processes > 1:
        problems.append(
            Warning(
                f"runworkers was asked for {requested_processes} processes on SQLite.",
                hint="SQLite allows one writer at a time: run one worker process "
                "(runworkers --processes 1) or use PostgreSQL.",
                id="django_workflows.W001",
            )
        )
    if database.get("OPTIONS", {}).get("transaction_mode") != "IMMEDIATE":
        problems.append(
            Warning(
                "SQLite is used without OPTIONS['transaction_mode'] = 'IMMEDIATE'.",
                hint="Worker threads then fail with 'database is locked' under load; set "
                "DATABASES[...]['OPTIONS'] = {'transaction_mode': 'IMMEDIATE', 'timeout': 20}.",
                id="django_workflows.W002",
            )
        )
    return problems


MIGRATE_HINT = "run `python manage.py migrate`"


def unapplied_migrations(alias: str) -> list[str] | None:
    """This app's migrations not applied on ``alias`` (None if the database can't be asked)."""
    from django.db import DatabaseError, connections
    from django.db.migrations.executor import MigrationExecutor

    try:
        executor = MigrationExecutor(connections[alias])
        plan = executor.migration_plan(executor.loader.graph.leaf_nodes())
    except DatabaseError:
        return None  # unreachable: other checks and runworkers' own wait say so
    return [migration.name for migration, _ in plan if migration.app_label == "django_workflows"]


@register(Tags.database)
def check_migrated(app_configs: Any = None, databases: Any = None, **kwargs: Any) -> list:
    """With ``check --database``: the workflow tables exist and are up to date."""
    import sys

    alias = conf.database()
    if not databases or alias not in databases or alias not in settings.DATABASES:
        return []
    if sys.argv[1:2] in (["migrate"], ["showmigrations"], ["sqlmigrate"], ["makemigrations"]):
        return []  # migrate runs the database checks too: it is the fix, not the problem
    missing = unapplied_migrations(alias)
    if not missing:
        return []
    return [
        Error(
            f"{len(missing)} django_workflows migration(s) are not applied on database {alias!r} "
            f"({', '.join(missing[:3])}{', ...' if len(missing) > 3 else ''}).",
            hint=MIGRATE_HINT[0].upper() + MIGRATE_HINT[1:] + ".",
            id="django_workflows.E005",
        )
    ]


def not_migrated_message(alias: str) -> str | None:
    """One line for runworkers and wf.send when the tables are missing or out of date."""
    missing = unapplied_migrations(alias)
    if not missing:
        return None
    return (
        f"the django_workflows tables on database {alias!r} are missing or out of date "
        f"({len(missing)} migration(s) not applied): {MIGRATE_HINT}"
    )
