"""Migrations are complete and reversible; system checks catch misconfiguration."""

from __future__ import annotations

from io import StringIO

import pytest
from django.core import checks as django_checks
from django.core.management import call_command
from django.db import connection
from django.db.migrations.executor import MigrationExecutor

from django_workflows import checks, conf

# -- migrations ---------------------------------------------------------------------------------------


@pytest.mark.django_db
def test_makemigrations_check_reports_no_changes():
    out = StringIO()
    # Raises SystemExit(1) if a model change has no migration.
    call_command("makemigrations", check_changes=True, dry_run=True, stdout=out, stderr=StringIO())
    assert "No changes detected" in out.getvalue()


@pytest.mark.django_db
def test_makemigrations_check_for_the_app_alone():
    out = StringIO()
    call_command("makemigrations", "django_workflows", check_changes=True, dry_run=True, stdout=out)
    assert "No changes detected" in out.getvalue()


@pytest.mark.django_db
def test_every_migration_is_applied_to_the_test_database():
    executor = MigrationExecutor(connection)
    plan = executor.migration_plan(executor.loader.graph.leaf_nodes())
    assert plan == []
    applied = {name for app, name in executor.loader.applied_migrations if app == "django_workflows"}
    assert "0001_initial" in applied


@pytest.mark.django_db
def test_every_declared_index_and_constraint_exists_in_the_database():
    """The migrations build what the models declare (a field's AlterField once dropped a
    unique constraint on its column without a trace in the migration state)."""
    from django.apps import apps

    with connection.cursor() as cursor:
        for model in apps.get_app_config("django_workflows").get_models():
            table = model._meta.db_table
            found = set(connection.introspection.get_constraints(cursor, table))
            declared = {i.name for i in model._meta.indexes} | {c.name for c in model._meta.constraints}
            assert declared <= found, f"{table}: missing {sorted(declared - found)}"


@pytest.mark.django_db(transaction=True)
def test_the_apps_migrations_reverse_and_apply_again():
    tables = set(connection.introspection.table_names())
    assert {"django_workflows_event", "django_workflows_run", "django_workflows_step", "django_workflows_queue"} <= tables
    call_command("migrate", "django_workflows", "zero", verbosity=0)
    left = {t for t in connection.introspection.table_names() if t.startswith("django_workflows")}
    assert left == set()
    call_command("migrate", "django_workflows", verbosity=0)
    assert {t for t in connection.introspection.table_names() if t.startswith("django_workflows")} == {
        t for t in tables if t.startswith("django_workflows")
    }


# -- system checks ------------------------------------------------------------------------------------


def ids(problems):
    return [p.id for p in problems]


def workflows_problems():
    return [p for p in django_checks.run_checks() if p.id.startswith("django_workflows.")]


@pytest.fixture
def wf_settings(settings):
    """Set DJANGO_WORKFLOWS keys for one test (the rest of the project's settings kept)."""

    def apply(**values):
        settings.DJANGO_WORKFLOWS = {**settings.DJANGO_WORKFLOWS, **values}

    return apply


@pytest.fixture
def extra_alias(settings, wf_settings, monkeypatch):
    """Point DJANGO_WORKFLOWS['DATABASE'] at an extra alias (the checks only read settings;
    nothing connects to it). Added in place and removed afterwards."""

    def make(alias, database):
        monkeypatch.setitem(settings.DATABASES, alias, database)
        wf_settings(DATABASE=alias)

    return make


@pytest.fixture
def sqlite_alias(extra_alias):
    def make(options):
        extra_alias("wf_sqlite", {"ENGINE": "django.db.backends.sqlite3", "NAME": ":memory:", "OPTIONS": options})

    return make


def test_the_project_settings_pass_the_checks():
    assert workflows_problems() == []
    assert checks.check_settings() == []


def test_the_check_is_registered_with_django():
    out = StringIO()
    call_command("check", stdout=out)
    assert "no issues" in out.getvalue()


def test_unknown_key_is_e002(wf_settings):
    wf_settings(LEASE_SECONDZ=5)
    problems = checks.check_settings()
    assert ids(problems) == ["django_workflows.E002"]
    assert "LEASE_SECONDZ" in problems[0].msg
    assert "LEASE_SECONDS" in problems[0].hint  # the known keys are listed
    assert problems[0].level == django_checks.ERROR
    assert "django_workflows.E002" in ids(workflows_problems())


def test_unknown_key_fails_manage_py_check(wf_settings):
    from django.core.management.base import SystemCheckError

    wf_settings(NOPE=1)
    with pytest.raises(SystemCheckError, match="django_workflows.E002"):
        call_command("check", stdout=StringIO(), stderr=StringIO())


def test_settings_not_a_dict_is_e001(settings):
    settings.DJANGO_WORKFLOWS = ["LEASE_SECONDS"]
    assert ids(checks.check_settings()) == ["django_workflows.E001"]


def test_bad_database_alias_is_e003(wf_settings):
    wf_settings(DATABASE="nowhere")
    problems = checks.check_settings()
    assert ids(problems) == ["django_workflows.E003"]
    assert "'nowhere'" in problems[0].msg


@pytest.mark.parametrize("value", [0, -1, -0.5, "30", None, True])
def test_non_positive_or_non_numeric_lease_seconds_is_e004(wf_settings, value):
    wf_settings(LEASE_SECONDS=value)
    problems = checks.check_settings()
    assert ids(problems) == ["django_workflows.E004"]
    assert "LEASE_SECONDS" in problems[0].msg


@pytest.mark.parametrize("value", [float("nan"), float("inf")], ids=["nan", "inf"])
def test_nan_or_infinite_lease_seconds_is_e004(wf_settings, value):
    wf_settings(LEASE_SECONDS=value)
    assert ids(checks.check_settings()) == ["django_workflows.E004"]


@pytest.mark.parametrize("key", ["POLL_INTERVAL", "SHUTDOWN_GRACE_SECONDS", "CONCURRENCY"])
def test_other_non_positive_numbers_are_e004(wf_settings, key):
    wf_settings(**{key: 0})
    problems = checks.check_settings()
    assert ids(problems) == ["django_workflows.E004"]
    assert key in problems[0].msg


def test_positive_values_pass(wf_settings):
    wf_settings(LEASE_SECONDS=0.5, POLL_INTERVAL=2, SHUTDOWN_GRACE_SECONDS=1, CONCURRENCY=3)
    assert checks.check_settings() == []
    assert conf.get("LEASE_SECONDS") == 0.5


def test_several_problems_are_all_reported(wf_settings):
    wf_settings(BOGUS=1, ALSO_BOGUS=2, LEASE_SECONDS=0)
    assert sorted(ids(checks.check_settings())) == [
        "django_workflows.E002", "django_workflows.E002", "django_workflows.E004"
    ]


def test_sqlite_without_immediate_transactions_is_w002(sqlite_alias):
    sqlite_alias({})
    problems = checks.check_settings()
    assert ids(problems) == ["django_workflows.W002"]
    assert problems[0].level == django_checks.WARNING
    assert "IMMEDIATE" in problems[0].msg and "IMMEDIATE" in problems[0].hint


def test_sqlite_with_immediate_transactions_passes(sqlite_alias):
    sqlite_alias({"transaction_mode": "IMMEDIATE", "timeout": 20})
    assert checks.check_settings() == []


def test_sqlite_w002_on_the_default_database(settings, monkeypatch):
    if connection.vendor != "sqlite":
        pytest.skip("the default database is not SQLite")
    monkeypatch.setitem(settings.DATABASES["default"], "OPTIONS", {"timeout": 20})
    assert ids(checks.check_settings()) == ["django_workflows.W002"]


def test_several_processes_on_sqlite_is_w001(sqlite_alias, monkeypatch):
    sqlite_alias({"transaction_mode": "IMMEDIATE"})
    monkeypatch.setattr(checks, "requested_processes", 2)
    problems = checks.check_settings()
    assert ids(problems) == ["django_workflows.W001"]
    assert "2 processes" in problems[0].msg
    assert "--processes 1" in problems[0].hint
    monkeypatch.setattr(checks, "requested_processes", 1)
    assert checks.check_settings() == []


def test_several_processes_on_postgresql_is_fine(extra_alias, monkeypatch):
    extra_alias("wf_pg", {"ENGINE": "django.db.backends.postgresql", "NAME": "x"})
    monkeypatch.setattr(checks, "requested_processes", 4)
    assert checks.check_settings() == []


def test_runworkers_processes_2_on_sqlite_warns_w001(sqlite_alias, monkeypatch):
    """runworkers --processes 2 sets requested_processes before Django runs the checks."""
    from django_workflows.management.commands import runworkers

    sqlite_alias({"transaction_mode": "IMMEDIATE"})
    seen = {}

    def fake_handle(self, *args, **options):
        seen["processes"] = options["processes"]
        seen["problems"] = ids(checks.check_settings())

    monkeypatch.setattr(runworkers.Command, "handle", fake_handle)
    monkeypatch.setattr(checks, "requested_processes", 1)
    err = StringIO()
    call_command("runworkers", "--processes", "2", "--burst", skip_checks=False, stderr=err, stdout=StringIO())
    assert seen == {"processes": 2, "problems": ["django_workflows.W001"]}
    assert "django_workflows.W001" in err.getvalue()


@pytest.mark.parametrize("key", ["NOTIFY", "PREPARED_STATEMENTS"])
@pytest.mark.parametrize("value", [0, "False", None])
def test_non_boolean_switches_are_e006(wf_settings, key, value):
    wf_settings(**{key: value})
    problems = checks.check_settings()
    assert ids(problems) == ["django_workflows.E006"]
    assert key in problems[0].msg and repr(value) in problems[0].msg


@pytest.mark.postgres
@pytest.mark.django_db
def test_the_queue_table_is_vacuumed_by_dead_rows_not_by_size():
    with connection.cursor() as cursor:
        cursor.execute("SELECT reloptions FROM pg_class WHERE relname = 'django_workflows_queue'")
        options = set(cursor.fetchone()[0] or [])
    assert {"autovacuum_vacuum_scale_factor=0.01", "autovacuum_vacuum_threshold=1000"} <= options
